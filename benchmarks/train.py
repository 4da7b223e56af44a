"""Training benchmarks on one GPU: the notebook pipeline against ``darklens train``, and the
model_a accuracy table. Everything runs in one process tree on one card; results go to JSON.

Stages (``--stage``):

* ``speed``: simulate a Common-Test-size model_a set (10,000 train / 2,500 val per class) unless
  ``--data`` exists, then (1) the notebook pipeline (``benchmarks/notebook_pipeline.py``: per-file
  loading, 4 workers, fp32, batch 64, seed_exact DenseNet-CBAM) for ``--notebook-epochs`` epochs;
  (2) ``darklens train --recipe fast`` with the same model on the same data; (3) ``darklens train
  --recipe seed`` (the notebook's hyper-parameters in darklens' data path) for a few epochs.
  Reports images/s of each, ``train_speedup_vs_notebook`` (fast / notebook images/s) and the
  wall time each needs to reach the notebook run's final val accuracy.
* ``accuracy``: ``darklens train --recipe fast`` for each of ``--models`` on the same kind of
  set; accuracy and macro AUC of the best epoch (by val macro AUC) in one table
  (``model_a_accuracy`` / ``model_a_macro_auc`` = the best model's).

    python benchmarks/train.py --stage speed --data /tmp/model_a --json speed.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def simulate(data: Path, n_train: int, n_val: int, seed: int) -> float:
    """Write the model_a set with the project's GPU simulator; returns seconds (0 if present)."""
    if (data / "val").is_dir():
        return 0.0
    from darklens.sim import simulate_dataset

    t = time.perf_counter()
    simulate_dataset(data, preset="model_a", n_train=n_train, n_val=n_val, seed=seed,
                     device="auto", progress=False)
    return time.perf_counter() - t


def pack(data: Path) -> float:
    """Build the packed cache once, so no timed run pays for it."""
    from darklens.data import open_dataset

    t = time.perf_counter()
    open_dataset(data, progress=False)
    return time.perf_counter() - t


def run_darklens(data: Path, out: Path, model: str, recipe: str, extra: list[str]) -> dict:
    """``python -m darklens train`` in a subprocess; returns its metrics rows and wall time."""
    cmd = [sys.executable, "-m", "darklens", "train", str(data), "--model", model,
           "--out", str(out), "--recipe", recipe, "--device", "auto", *extra]
    print("+", " ".join(cmd), flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - t
    rows = read_metrics(out / "metrics.csv")
    if proc.returncode != 0 and not rows:
        raise SystemExit(f"darklens train failed ({proc.returncode}): {' '.join(cmd)}")
    return {"command": " ".join(["darklens", *cmd[3:]]), "rows": rows, "process_wall_s": wall,
            "returncode": proc.returncode}


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def steady_images_per_s(rows: list[dict]) -> float:
    """Median training images/s over epochs after the first (which pays warm-up/compile)."""
    values = sorted(r["train_images_per_s"] for r in (rows[1:] or rows))
    return values[len(values) // 2]


def time_to_accuracy(run: dict, target: float) -> float | None:
    """Wall seconds from process start until an epoch's val accuracy >= target (None: never).

    Start-up (imports, data to GPU, compile) is the process wall time not spent in epochs.
    """
    rows = run["rows"]
    startup = run["process_wall_s"] - rows[-1]["elapsed_s"]
    for r in rows:
        if r["accuracy"] >= target:
            return startup + r["elapsed_s"]
    return None


def stage_speed(a: argparse.Namespace, runs: Path) -> dict:
    nb_json = runs / "notebook.json"
    cmd = [sys.executable, str(HERE / "notebook_pipeline.py"), str(a.data), "--epochs",
           str(a.notebook_epochs), "--warmup-epochs", str(a.notebook_warmup), "--json",
           str(nb_json)]
    print("+", " ".join(cmd), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    notebook = json.loads(nb_json.read_text())
    notebook["process_wall_s"] = time.perf_counter() - t
    target = notebook["final_val_accuracy"]
    seed_exact = ["--set", "model_kwargs={seed_exact: true}"]
    fast = run_darklens(a.data, runs / "fast", "densenet_cbam", "fast",
                        ["--epochs", str(a.fast_epochs), *seed_exact])
    seed = run_darklens(a.data, runs / "seed", "densenet_cbam", "seed",
                        ["--epochs", str(a.seed_epochs), *seed_exact])
    ips_nb = notebook["train_images_per_s"]
    ips_fast, ips_seed = steady_images_per_s(fast["rows"]), steady_images_per_s(seed["rows"])
    tta_nb = notebook["process_wall_s"]
    tta_fast = time_to_accuracy(fast, target)
    return {
        "notebook": notebook, "fast": fast, "seed_recipe": seed,
        "notebook_images_per_s": ips_nb, "fast_images_per_s": ips_fast,
        "seed_recipe_images_per_s": ips_seed,
        "train_speedup_vs_notebook": ips_fast / ips_nb,
        "seed_recipe_speedup_vs_notebook": ips_seed / ips_nb,
        "target_val_accuracy": target,
        "notebook_time_to_accuracy_s": tta_nb,
        "fast_time_to_accuracy_s": tta_fast,
        "time_to_accuracy_ratio": (tta_nb / tta_fast) if tta_fast else None,
        "fast_final_accuracy": fast["rows"][-1]["accuracy"],
        "fast_best_macro_auc": max(r["auc_macro"] for r in fast["rows"]),
    }


def stage_accuracy(a: argparse.Namespace, runs: Path) -> dict:
    table = {}
    for spec in a.models.split(","):
        name, _, epochs = spec.partition(":")
        extra = ["--epochs", epochs or str(a.fast_epochs)]
        for item in a.set or []:
            extra += ["--set", item]
        if name.startswith("e2cnn"):
            extra += ["--set", "compile=off"]  # e2cnn's R2Conv rebuilds filters: no graph gain
        run = run_darklens(a.data, runs / name, name, "fast", extra)
        rows = run["rows"]
        best = max(rows, key=lambda r: r["auc_macro"])
        table[name] = {"command": run["command"], "epochs": len(rows),
                       "accuracy": best["accuracy"], "macro_auc": best["auc_macro"],
                       "micro_auc": best["auc_micro"], "macro_f1": best["macro_f1"],
                       "best_epoch": int(best["epoch"]),
                       "images_per_s": steady_images_per_s(rows),
                       "train_wall_s": run["process_wall_s"]}
        print(json.dumps({name: table[name]}), flush=True)
    best_name = max(table, key=lambda n: table[n]["macro_auc"])
    return {"models": table, "best_model": best_name,
            "model_a_accuracy": table[best_name]["accuracy"],
            "model_a_macro_auc": table[best_name]["macro_auc"]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="darklens training benchmarks")
    p.add_argument("--stage", choices=["speed", "accuracy"], required=True)
    p.add_argument("--data", type=Path, default=Path("/tmp/model_a"))
    p.add_argument("--n-train", type=int, default=10_000, help="per class")
    p.add_argument("--n-val", type=int, default=2_500, help="per class")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--runs", type=Path, default=Path("/tmp/bench_runs"))
    p.add_argument("--notebook-epochs", type=int, default=4)
    p.add_argument("--notebook-warmup", type=int, default=1)
    p.add_argument("--fast-epochs", type=int, default=12)
    p.add_argument("--seed-epochs", type=int, default=2)
    p.add_argument("--models", default="densenet_cbam")
    p.add_argument("--set", action="append", help="extra --set for the accuracy runs")
    p.add_argument("--json", type=Path, required=True)
    a = p.parse_args(argv)

    import torch

    result = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "data": {"preset": "model_a", "n_train_per_class": a.n_train,
                       "n_val_per_class": a.n_val, "seed": a.data_seed}}
    result["simulate_s"] = simulate(a.data, a.n_train, a.n_val, a.data_seed)
    print(f"simulated in {result['simulate_s']:.1f} s", flush=True)
    result["pack_s"] = pack(a.data)
    print(f"packed in {result['pack_s']:.1f} s", flush=True)
    a.runs.mkdir(parents=True, exist_ok=True)
    stage = stage_speed if a.stage == "speed" else stage_accuracy
    result.update(stage(a, a.runs))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(result, indent=1))
    summary = {k: v for k, v in result.items() if not isinstance(v, (dict, list))}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
