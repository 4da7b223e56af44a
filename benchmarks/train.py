"""Training benchmarks: notebook vs ``darklens train`` speed, the model_a accuracy table on
several GPUs at once, DDP scaling, and simulation time. Results go to JSON, rewritten after every
finished job, so a run killed at its wall limit keeps everything finished before.

GPU run (ONE device call, 4 GPUs, 10-minute limit). ``--deadline`` (unix time) is shared by the
chained commands: each clips its jobs so that everything, evaluation included, ends before it, and
every JSON is rewritten after each finished job, so a timeout loses only what was in flight::

    END=$(( $(date +%s) + 570 )); D=/tmp/model_a; B="python benchmarks/train.py"
    $B --stage simulate --data $D --train 2000 --val 500 --test 500 --gpus 4 \
       --deadline $END --json $OUT/train_simulate.json
    $B --stage accuracy --data $D --gpus 4 --runs /tmp/acc --job-minutes 3 \
       --models densenet_cbam:30,e2cnn_c8:20,resnet18:20,densenet_cbam:20:seed \
       --deadline $((END - 150)) --json $OUT/train_accuracy.json
    $B --stage ddp --data $D --gpu-counts 1,2,4 --epochs 3 --model densenet_cbam \
       --runs /tmp/ddp --job-minutes 1 --deadline $END --json $OUT/train_ddp.json

Run folders stay in /tmp (a resnet18 run holds ~300 MB of checkpoints and state); each holds
log.txt, metrics.csv and eval_test/report.json. Re-running a command resumes its unfinished runs in
place (``darklens train --resume``, under the hard kill only: the saved time limit is kept).
CPU smoke test (what the session ran, 2-core box): the same with ``--device cpu``,
``--sim-set image_size=32`` at 40/20/20 per class, ``--set batch_size=32``, ``--models
resnet_tiny:1,densenet_cbam_tiny:1`` and ``--gpu-counts 1,2 --model resnet_tiny --epochs 2``.

Stages (``--stage``):

* ``speed``: the notebook pipeline (``benchmarks/notebook_pipeline.py``: per-file loading,
  4 workers, fp32, batch 64) against ``darklens train --recipe fast`` and ``--recipe seed`` on one
  GPU; images/s, ``train_speedup_vs_notebook`` and time to the notebook's final val accuracy.
  ``--fast-eager-epochs`` / ``--sim-epochs`` add the fast recipe without torch.compile / on
  fresh simulated images (``sim:PRESET``) to the same call.
* ``accuracy``: ``--models`` (``name:epochs[:recipe[:train]]``, recipe default ``fast``) trained
  concurrently, one job per GPU (``CUDA_VISIBLE_DEVICES``; a queue when there are more jobs than
  GPUs; ``--jobs-per-gpu K`` runs K jobs on each GPU, for accuracy only: they share its speed),
  each in ``RUNS/<name>-<recipe>[-sim]`` with its log there, under ``--job-minutes``; then
  ``darklens evaluate RUN DATA --split test`` on the same GPU. ``train`` = ``sim`` trains on
  fresh images of DATA's own preset and simulator settings (``darklens train sim:PRESET``)
  instead of DATA's train split; the test split scores it like the rest. ``model_a_accuracy`` /
  ``model_a_macro_auc`` (``<preset>[+KEY=VALUE...]_...``: the data's preset and simulator
  overrides) are those of the best model by test macro AUC.
* ``ddp``: ``torchrun --standalone --nproc_per_node k`` for each k of ``--gpu-counts``; steady
  images/s, speed-up vs k=1, scaling efficiency and final val accuracy. ``darklens train``'s
  ``batch_size`` is GLOBAL (split evenly over ranks), so by default every k trains the same
  global batch (strong scaling; per-GPU batch = global / k); ``--per-gpu-batch B`` instead keeps
  B per GPU (weak scaling, global = B * k, same lr).
* ``simulate``: ``darklens simulate`` (the CLI, ``--device auto``; with ``--gpus N`` N shards,
  one per GPU) then the packed cache, each timed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
T0 = time.monotonic()
_children: set[subprocess.Popen] = set()  # every live process group we started
_lock = threading.Lock()  # guards _children and the shared result dict / JSON file


# --- subprocesses under a wall limit ---------------------------------------------------------

def run_limited(cmd: list[str], *, env: dict, log: Path | None, limit_s: float | None) -> dict:
    """Run ``cmd`` in its own process group; kill the group after ``limit_s`` seconds.

    Returns ``{"returncode", "wall_s", "killed"}``. Output goes to ``log`` (appended) or inherits
    ours. A process group, so torchrun's workers die with it.
    """
    print("+", " ".join(cmd), flush=True)
    out = log.open("a") if log else None
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                            stdout=out, stderr=subprocess.STDOUT if out else None,
                            start_new_session=True)
    with _lock:
        _children.add(proc)
    killed = False
    try:
        proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        killed = True
        _kill_group(proc)
    finally:
        with _lock:
            _children.discard(proc)
        if out:
            out.close()
    return {"returncode": proc.returncode, "wall_s": time.perf_counter() - t, "killed": killed}


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the group, SIGKILL it 10 s later if it still lives."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


_on_interrupt: list = []  # callbacks that record what in-flight jobs got so far


def _on_sigterm(signum, frame):  # the device tool's timeout: leave no orphans behind
    with _lock:
        procs = list(_children)
    for p in procs:
        _kill_group(p)
    for callback in _on_interrupt:
        callback()
    raise SystemExit(128 + signum)


def remaining_s(a: argparse.Namespace) -> float:
    """Seconds left of ``--budget-min`` and before ``--deadline`` (infinite without either)."""
    left = float("inf")
    if a.budget_min:
        left = a.budget_min * 60 - (time.monotonic() - T0)
    if a.deadline:
        left = min(left, a.deadline - time.time())
    return left


def write_json(path: Path, result: dict) -> None:
    """Atomic rewrite, so a kill mid-write never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)


# --- reading run folders -------------------------------------------------------------------

def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        return [{k: _float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _float(v: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def steady_images_per_s(rows: list[dict]) -> float | None:
    """Median training images/s over epochs after the first (which pays warm-up/compile)."""
    if not rows:
        return None
    values = sorted(r["train_images_per_s"] for r in (rows[1:] or rows))
    return values[len(values) // 2]


def count_params(run: Path) -> int | None:
    """Trainable parameters of the run's model (rebuilt from best.json, weights not loaded)."""
    try:
        meta = json.loads((run / "best.json").read_text())
        from darklens.models import create_model

        net = create_model(meta["model"], in_chans=1, num_classes=3, **meta["model_kwargs"])
        return sum(p.numel() for p in net.parameters() if p.requires_grad)
    except Exception as e:  # a count must never cost the table
        print(f"{run}: cannot count parameters ({type(e).__name__}: {e})", flush=True)
        return None


# --- device slots --------------------------------------------------------------------------

@dataclass
class Slots:
    """Where jobs run: ``n`` slots, ``per_gpu`` of them on each GPU, or ``n`` CPU processes."""

    device: str  # "cuda" or "cpu": passed to darklens as --device
    n: int
    free: list = field(default_factory=list)
    per_gpu: int = 1  # jobs sharing one GPU (accuracy runs only: speed figures need a GPU alone)

    def env(self, ids: list[int]) -> dict:
        """Environment of a job on slots ``ids``: its GPUs, and CPU threads per process.

        One process per slot (torchrun runs one per GPU), so each gets cores / slots threads:
        more would oversubscribe the cores, and OpenMP barriers then stall every step.
        """
        threads = str(max(1, (os.cpu_count() or 1) // self.n))
        if self.device == "cpu":
            return {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads}
        gpus = sorted({i // self.per_gpu for i in ids})
        return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)), "OMP_NUM_THREADS": threads}


def make_slots(device: str, n: int, per_gpu: int = 1) -> Slots:
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        import torch

        have = torch.cuda.device_count()
        if have < n:
            raise SystemExit(f"--gpus {n}: only {have} CUDA devices visible")
    return Slots(device=device, n=n * per_gpu, per_gpu=per_gpu)


def run_pool(jobs: list, slots: Slots, work) -> None:
    """``work(job, slot_id)`` for every job, at most one job per slot at a time, in order."""
    queue = list(jobs)

    def worker(slot: int) -> None:
        while True:
            with _lock:
                if not queue:
                    return
                job = queue.pop(0)
            try:
                work(job, slot)
            except Exception as e:  # one broken job must not stop the queue of its slot
                print(f"job {job!r} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(slots.n)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():  # join with a timeout so SIGTERM reaches the main thread
            t.join(timeout=1.0)


def darklens_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "darklens", *args]


def training_failed(tr: dict) -> bool:
    """``darklens train`` exited with an error (a crash, or ``--resume`` refusing changed
    settings), not at the wall limit. Its folder may still hold an older run's metrics.csv and
    best.json: reporting or scoring them would pass the old run off as this one."""
    return tr["returncode"] != 0 and not tr["killed"]


def train_args(run: Path, extra: list[str], minutes: float, fit_budget: bool = False) -> list[str]:
    """Resume an interrupted run in place (re-running the driver after a timeout continues it);
    otherwise a fresh one under an in-loop time limit.

    A resumed run gets the job's settings too: ``darklens train --resume`` refuses any that
    differ from the saved run, so re-running the driver with other ``--set`` items into the
    same ``--runs`` fails loudly instead of silently reporting the old run as the new one."""
    if (run / "last.state.pt").exists():
        return ["--resume", *extra]
    # The loop's clock starts after data loading/compile: leave it 30 s of the job's minutes.
    # budget_min fits the epochs (and so the cosine's end) to that time after epoch 1, so a
    # slow model is not cut off at full learning rate; time_limit_min stays the hard stop.
    limit = max(0.1, minutes - 0.5)
    budget = ["--set", f"budget_min={limit:.2f}"] if fit_budget else []
    return [*budget, *extra, "--set", f"time_limit_min={limit:.2f}"]


# --- stage: accuracy -----------------------------------------------------------------------

def parse_models(text: str, default_epochs: int) -> list[tuple[str, int, str, str]]:
    """``name:epochs[:recipe[:train]]`` items; train ``sim`` trains on fresh simulated images."""
    specs = []
    for spec in text.split(","):
        name, epochs, recipe, train = (spec.split(":") + ["", "", ""])[:4]
        if train not in ("", "data", "sim"):
            raise SystemExit(f"--models {spec}: the 4th field is 'data' or 'sim', not {train!r}")
        specs.append((name, int(epochs or default_epochs), recipe or "fast", train or "data"))
    return specs


def accuracy_job(a, slots: Slots, spec, slot: int, result: dict) -> None:
    name, epochs, recipe, train_on = spec
    key = f"{name}-{recipe}" + ("-sim" if train_on == "sim" else "")
    run = a.runs / key
    run.mkdir(parents=True, exist_ok=True)
    log = run / "log.txt"
    env = slots.env([slot])
    # "sim": fresh images of the data's own preset every step (the data's simulator overrides
    # too); validation on a fixed simulated set; the test split of --data scores it like the rest
    train_data, sim_extra = sim_source(result["data"]) if train_on == "sim" else (str(a.data), [])
    entry = {"model": name, "recipe": recipe, "epochs_requested": epochs, "slot": slot,
             "train_data": train_data, "run": str(run), "log": str(log)}
    minutes = min(a.job_minutes, (remaining_s(a) - 60 * a.eval_minutes) / 60 - 1)
    with _lock:
        result["models"][key] = {**entry, "status": "running"}
        write_json(a.json, result)
    if minutes < min(0.25, a.job_minutes):
        entry["status"] = "skipped: --budget-min spent"
    else:
        extra = ["--epochs", str(epochs), *sim_extra]
        for item in a.set or []:
            extra += ["--set", item]
        cmd = darklens_cmd("train", train_data, "--model", name, "--out", str(run), "--recipe",
                           recipe, "--device", slots.device,
                           *train_args(run, extra, minutes, fit_budget=True))
        tr = run_limited(cmd, env=env, log=log, limit_s=60 * (minutes + 1))
        entry.update(command=" ".join(["darklens", *cmd[3:]]), train_returncode=tr["returncode"],
                     train_killed=tr["killed"], train_wall_min=tr["wall_s"] / 60)
        failed = training_failed(tr)
        if not failed:
            entry.update(train_summary(run))
        if not failed and (run / "best.json").exists():
            entry["params"] = count_params(run)
            ev = run_limited(darklens_cmd("evaluate", str(run), str(a.data), "--split",
                                          a.eval_split, "--out", str(run / f"eval_{a.eval_split}"),
                                          "--device", slots.device),
                             env=env, log=log, limit_s=max(30.0, remaining_s(a) - 5))
            report = run / f"eval_{a.eval_split}" / "report.json"
            if ev["returncode"] == 0 and report.exists():
                r = json.loads(report.read_text())
                entry.update(test_accuracy=r["accuracy"], test_macro_auc=r["auc"]["macro"],
                             test_macro_auc_ci95=r["ci95"]["macro_auc"],
                             test_micro_auc=r["auc"]["micro"], eval_split=a.eval_split)
            entry["eval_wall_min"] = ev["wall_s"] / 60
        entry["status"] = (f"failed: darklens train exited {tr['returncode']}, see {log}"
                           if failed else "ok" if "test_macro_auc" in entry
                           else "failed: see log")
        if tr["killed"]:
            entry["status"] += " (train killed at the wall limit)"
        entry["wall_min"] = entry["train_wall_min"] + entry.get("eval_wall_min", 0.0)
    with _lock:
        result["models"][key] = entry
        _summarise_accuracy(result)
        write_json(a.json, result)
    print(json.dumps({key: entry}), flush=True)


def train_summary(run: Path) -> dict:
    """Epochs done, the best epoch (by val macro AUC) and steady images/s from metrics.csv."""
    rows = read_metrics(run / "metrics.csv")
    if not rows:
        return {}
    best = max(rows, key=lambda r: r["auc_macro"] if r["auc_macro"] == r["auc_macro"] else -1)
    return {"epochs_done": len(rows), "best_epoch": int(best["epoch"]),
            "val_accuracy": best["accuracy"], "val_macro_auc": best["auc_macro"],
            "train_images_per_s": steady_images_per_s(rows)}


def _record_interrupted(a: argparse.Namespace, result: dict) -> None:
    """On SIGTERM: keep the training numbers of jobs still running (not evaluated)."""
    for entry in result["models"].values():
        if entry.get("status") == "running":
            entry.update(train_summary(Path(entry["run"])), status="interrupted: not evaluated")
    result["table_md"] = accuracy_table(result)
    write_json(a.json, result)


def _summarise_accuracy(result: dict) -> None:
    scored = {k: e for k, e in result["models"].items() if e.get("test_macro_auc") is not None}
    if scored:
        best = max(scored, key=lambda k: scored[k]["test_macro_auc"])
        # keys name the data: its preset, plus its simulator overrides when it has any
        data = result.get("data", {})
        name = "+".join([data.get("preset", "model_a"), *(data.get("sim_set") or [])])
        result.update({"best_model": best, f"{name}_accuracy": scored[best]["test_accuracy"],
                       f"{name}_macro_auc": scored[best]["test_macro_auc"]})


def accuracy_table(result: dict) -> str:
    def f(v, fmt="{:.4f}"):
        return "n/a" if v is None else fmt.format(v)

    lines = ["| model | recipe | params | epochs | val acc | val macro AUC | test acc | "
             "test macro AUC (95% CI) | test micro AUC | train img/s | wall min | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in result["models"].values():
        ci = e.get("test_macro_auc_ci95")
        ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        recipe = e["recipe"] + (" (sim)" if e.get("train_data", "").startswith("sim:") else "")
        lines.append(
            f"| {e['model']} | {recipe} | {f(e.get('params'), '{:,}')} | "
            f"{e.get('epochs_done', 0)}/{e['epochs_requested']} | {f(e.get('val_accuracy'))} | "
            f"{f(e.get('val_macro_auc'))} | {f(e.get('test_accuracy'))} | "
            f"{f(e.get('test_macro_auc'))}{ci_text} | {f(e.get('test_micro_auc'))} | "
            f"{f(e.get('train_images_per_s'), '{:,.0f}')} | {f(e.get('wall_min'), '{:.1f}')} | "
            f"{e['status']} |")
    return "\n".join(lines)


def stage_accuracy(a: argparse.Namespace, result: dict) -> None:
    if not (a.data / a.eval_split).is_dir():
        raise SystemExit(f"{a.data}: no {a.eval_split}/ split to evaluate on; simulate one "
                         "(--stage simulate --test K) or pass --eval-split val")
    slots = make_slots(a.device, a.gpus, a.jobs_per_gpu)
    result.update(gpus=a.gpus, jobs_per_gpu=a.jobs_per_gpu, slot_device=slots.device,
                  job_minutes=a.job_minutes, models={})
    write_json(a.json, result)
    _on_interrupt.append(lambda: _record_interrupted(a, result))
    specs = parse_models(a.models, a.fast_epochs)
    run_pool(specs, slots, lambda spec, slot: accuracy_job(a, slots, spec, slot, result))
    result["table_md"] = accuracy_table(result)
    write_json(a.json, result)
    print(result["table_md"])


# --- stage: ddp ----------------------------------------------------------------------------

def stage_ddp(a: argparse.Namespace, result: dict) -> None:
    counts = [int(k) for k in a.gpu_counts.split(",")]
    slots = make_slots(a.device, max(counts))
    result.update(model=a.model, recipe=a.recipe, epochs=a.epochs, slot_device=slots.device,
                  batch_semantics="darklens batch_size is global, split evenly over ranks",
                  scaling={})
    for k in counts:
        run = a.runs / f"ddp{k}"
        run.mkdir(parents=True, exist_ok=True)
        minutes = min(a.job_minutes, remaining_s(a) / 60 - 1.1)  # killed at minutes + 1
        entry = {"gpus": k, "run": str(run)}
        if minutes < min(0.25, a.job_minutes):
            entry["status"] = "skipped: --budget-min spent"
        else:
            extra = ["--epochs", str(a.epochs)]
            if a.per_gpu_batch:
                extra += ["--batch", str(a.per_gpu_batch * k)]
            for item in a.set or []:
                extra += ["--set", item]
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", str(k), "-m", "darklens", "train", str(a.data), "--model",
                   a.model, "--recipe", a.recipe, "--out", str(run), "--device", slots.device,
                   *train_args(run, extra, minutes)]
            tr = run_limited(cmd, env=slots.env(list(range(k))), log=run / "log.txt",
                             limit_s=60 * (minutes + 1))
            rows = [] if training_failed(tr) else read_metrics(run / "metrics.csv")
            entry.update(run_batch(run))
            entry.update(command=" ".join(["torchrun", *cmd[3:]]), returncode=tr["returncode"],
                         killed=tr["killed"], wall_min=tr["wall_s"] / 60, epochs_done=len(rows))
            if rows:
                entry.update(images_per_s=steady_images_per_s(rows),
                             final_val_accuracy=rows[-1]["accuracy"],
                             final_val_macro_auc=rows[-1]["auc_macro"],
                             steady_epochs=len(rows[1:] or rows))
            entry["status"] = "ok" if rows and tr["returncode"] == 0 else "incomplete: see log"
        result["scaling"][str(k)] = entry
        base = result["scaling"].get(str(counts[0]), {}).get("images_per_s")
        for e in result["scaling"].values():
            if base and e.get("images_per_s"):
                e["speedup_vs_first"] = e["images_per_s"] / base
                e["scaling_efficiency"] = e["speedup_vs_first"] * counts[0] / e["gpus"]
        write_json(a.json, result)
        print(json.dumps({f"ddp{k}": entry}), flush=True)
    result["table_md"] = ddp_table(result)
    write_json(a.json, result)
    print(result["table_md"])


def run_batch(run: Path) -> dict:
    """Global and per-process batch as the run resolved them (recipe, --batch, --set)."""
    import yaml

    try:
        config = yaml.safe_load((run / "config.yaml").read_text())
        world = int(config["world_size"])
        return {"global_batch": int(config["batch_size"]), "world_size": world,
                "per_gpu_batch": int(config["batch_size"]) // world}
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return {}


def ddp_table(result: dict) -> str:
    lines = ["| GPUs | global batch | per-GPU batch | epochs | train img/s (steady) | speed-up | "
             "efficiency | final val acc | status |", "|---|---|---|---|---|---|---|---|---|"]
    for e in result["scaling"].values():
        def f(key, fmt="{:.3f}", e=e):
            return "n/a" if e.get(key) is None else fmt.format(e[key])

        lines.append(f"| {e['gpus']} | {f('global_batch', '{}')} | {f('per_gpu_batch', '{}')} | "
                     f"{e.get('epochs_done', 0)} | {f('images_per_s', '{:,.0f}')} | "
                     f"{f('speedup_vs_first', '{:.2f}x')} | {f('scaling_efficiency', '{:.0%}')} "
                     f"| {f('final_val_accuracy')} | {e['status']} |")
    return "\n".join(lines)


# --- stage: simulate -----------------------------------------------------------------------

def stage_simulate(a: argparse.Namespace, result: dict) -> None:
    slots = make_slots("cpu" if a.device == "cpu" else "auto", a.gpus)
    sim_set = [x for item in a.sim_set or [] for x in ("--set", item)]
    result.update(gpus=a.gpus, sim_set=a.sim_set or [], already_present=(a.data / "val").is_dir())
    shards = {}

    def work(i: int, slot: int) -> None:
        cmd = darklens_cmd("simulate", str(a.data), "--train", str(a.n_train), "--val",
                           str(a.n_val), "--test", str(a.n_test), "--seed", str(a.data_seed),
                           "--device", "cpu" if a.device == "cpu" else "auto",
                           "--shard", f"{i}/{a.gpus}", "--preset", a.preset, *sim_set)
        shards[i] = run_limited(cmd, env=slots.env([slot]), log=None,
                                limit_s=max(1.0, remaining_s(a) - 30))

    t = time.perf_counter()
    run_pool(list(range(a.gpus)), slots, work)
    result["simulate_s"] = time.perf_counter() - t
    result["shards"] = shards
    n_images = 3 * (a.n_train + a.n_val + a.n_test)
    result["simulate_images_per_s"] = n_images / result["simulate_s"]
    write_json(a.json, result)
    if any(s["returncode"] != 0 for s in shards.values()):
        raise SystemExit(f"darklens simulate failed: {shards}")
    print(f"simulated {n_images} images in {result['simulate_s']:.1f} s", flush=True)
    result["pack_s"] = pack(a.data)
    print(f"packed in {result['pack_s']:.1f} s", flush=True)
    write_json(a.json, result)


# --- stage: speed (one GPU, sequential) ----------------------------------------------------

def simulate(data: Path, n_train: int, n_val: int, n_test: int, seed: int,
             sim_set: list[str] | None = None, preset: str = "model_a") -> float:
    """Write the preset's set with the project's simulator; returns seconds (0 if present)."""
    if (data / "val").is_dir():
        return 0.0
    from darklens.config import parse_set_args
    from darklens.sim import simulate_dataset

    t = time.perf_counter()
    simulate_dataset(data, preset=preset, n_train=n_train, n_val=n_val, n_test=n_test,
                     seed=seed, device="auto", progress=False,
                     overrides=parse_set_args(sim_set or []))
    return time.perf_counter() - t


def pack(data: Path) -> float:
    """Build the packed cache once, so no timed run pays for it."""
    from darklens.data import open_dataset

    t = time.perf_counter()
    open_dataset(data, progress=False)
    return time.perf_counter() - t


def run_darklens(data: Path | str, out: Path, model: str, recipe: str, extra: list[str]) -> dict:
    """``python -m darklens train`` in a subprocess; returns its metrics rows and wall time."""
    cmd = darklens_cmd("train", str(data), "--model", model, "--out", str(out), "--recipe",
                       recipe, "--device", "auto", *extra)
    proc = run_limited(cmd, env={}, log=None, limit_s=None)
    rows = read_metrics(out / "metrics.csv")
    if proc["returncode"] != 0 and not rows:
        raise SystemExit(f"darklens train failed ({proc['returncode']}): {' '.join(cmd)}")
    import yaml

    try:  # whether torch.compile was really used (it falls back to eager with a warning)
        compiled = yaml.safe_load((out / "config.yaml").read_text()).get("compiled")
    except (OSError, AttributeError, yaml.YAMLError):
        compiled = None
    return {"command": " ".join(["darklens", *cmd[3:]]), "rows": rows, "compiled": compiled,
            "process_wall_s": proc["wall_s"], "returncode": proc["returncode"]}


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


def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is 0 (e.g. no steady epoch was timed)."""
    return a / b if a is not None and b else None


def stage_speed(a: argparse.Namespace, result: dict) -> None:
    runs = a.runs
    nb_json = runs / "notebook.json"
    cmd = [sys.executable, str(HERE / "notebook_pipeline.py"), str(a.data), "--epochs",
           str(a.notebook_epochs), "--warmup-epochs", str(a.notebook_warmup), "--json",
           str(nb_json)]
    t = time.perf_counter()
    if run_limited(cmd, env={}, log=None, limit_s=None)["returncode"] != 0:
        raise SystemExit(f"notebook pipeline failed: {' '.join(cmd)}")
    notebook = json.loads(nb_json.read_text())
    notebook["process_wall_s"] = time.perf_counter() - t
    target = notebook["final_val_accuracy"]
    # --set items reach every darklens run of the stage (e.g. a CPU smoke test's batch size)
    # The notebook's network; its transitions pool first (the same function, ~19% fewer FLOPs)
    seed_exact = ["--set", "model_kwargs={seed_exact: true, pool_first: true}",
                  *[x for item in a.set or [] for x in ("--set", item)]]
    fast = run_darklens(a.data, runs / "fast", "densenet_cbam", "fast",
                        ["--epochs", str(a.fast_epochs), *seed_exact])
    seed = run_darklens(a.data, runs / "seed", "densenet_cbam", "seed",
                        ["--epochs", str(a.seed_epochs), *seed_exact])
    if a.fast_eager_epochs:  # the default recipe without torch.compile, for the record
        eager = run_darklens(a.data, runs / "fast_eager", "densenet_cbam", "fast",
                             ["--epochs", str(a.fast_eager_epochs), *seed_exact,
                              "--set", "compile=off"])
        ips = steady_images_per_s(eager["rows"])
        ratio = _ratio(ips, notebook["train_images_per_s"])
        result.update({"fast_eager": eager, "fast_eager_images_per_s": ips,
                       "fast_eager_speedup_vs_notebook": ratio,
                       "fast_eager_time_to_accuracy_s": time_to_accuracy(eager, target)})
    if a.sim_epochs:  # the default recipe on fresh simulated images (darklens train sim:...)
        sim_data, sim_extra = sim_source(result["data"])
        sim = run_darklens(sim_data, runs / "fast_sim", "densenet_cbam", "fast",
                           ["--epochs", str(a.sim_epochs), *seed_exact, *sim_extra])
        ips = steady_images_per_s(sim["rows"])
        result.update({"fast_sim": sim, "fast_sim_images_per_s": ips,
                       "fast_sim_speedup_vs_notebook": _ratio(ips, notebook["train_images_per_s"])})
    ips_nb = notebook["train_images_per_s"]
    ips_fast, ips_seed = steady_images_per_s(fast["rows"]), steady_images_per_s(seed["rows"])
    tta_nb = notebook["process_wall_s"]
    tta_fast = time_to_accuracy(fast, target)
    result.update({
        "notebook": notebook, "fast": fast, "seed_recipe": seed,
        "notebook_images_per_s": ips_nb, "fast_images_per_s": ips_fast,
        "seed_recipe_images_per_s": ips_seed,
        "train_speedup_vs_notebook": _ratio(ips_fast, ips_nb),
        "seed_recipe_speedup_vs_notebook": _ratio(ips_seed, ips_nb),
        "target_val_accuracy": target,
        "notebook_time_to_accuracy_s": tta_nb,
        "fast_time_to_accuracy_s": tta_fast,
        "time_to_accuracy_ratio": (tta_nb / tta_fast) if tta_fast else None,
        "fast_final_accuracy": fast["rows"][-1]["accuracy"],
        "fast_best_macro_auc": max(r["auc_macro"] for r in fast["rows"]),
    })
    write_json(a.json, result)


# --- main ----------------------------------------------------------------------------------

def sim_overrides(preset: str, config: dict) -> list[str]:
    """``KEY=VALUE`` items that turn ``preset`` into the simulator config a dataset recorded
    (so training on ``sim:PRESET`` draws from the same population as the data's test split)."""
    from darklens.config import to_dict
    from darklens.sim.presets import get_config

    base = to_dict(get_config(preset))
    items = []
    for key, value in config.items():
        if key == "preset" or key not in base or value == base[key]:
            continue
        text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        items.append(f"{key}={text}")
    return items


def sim_source(data_record: dict) -> tuple[str, list[str]]:
    """``darklens train`` DATA and ``--set`` items that draw fresh images like a recorded set."""
    sim_set = data_record.get("sim_set") or []
    extra = ["--set", f"sim_set={json.dumps(sim_set)}"] if sim_set else []  # quoted: commas
    return f"sim:{data_record.get('preset', 'model_a')}", extra


def _data_record(data: Path, fallback: dict) -> dict:
    """What the data really is (its simulate config.yaml), not what the flags said it would be:
    an existing folder is reused as it is, whatever --train/--seed say."""
    try:
        import yaml

        cfg = yaml.safe_load((data / "config.yaml").read_text())
        counts = cfg["images_per_class"]
        return {"path": str(data), "preset": cfg["preset"], "seed": cfg["seed"],
                "n_train_per_class": counts["train"], "n_val_per_class": counts["val"],
                "n_test_per_class": counts["test"],
                "sim_set": sim_overrides(cfg["preset"], cfg.get("config") or {})}
    except (OSError, KeyError, TypeError, ValueError):
        return {**fallback, "note": "no readable simulate config.yaml; values from the flags"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="darklens training benchmarks")
    p.add_argument("--stage", choices=["speed", "accuracy", "ddp", "simulate"], required=True)
    p.add_argument("--data", type=Path, default=Path("/tmp/model_a"))
    p.add_argument("--train", "--n-train", dest="n_train", type=int, default=10_000,
                   help="simulated images per class")
    p.add_argument("--val", "--n-val", dest="n_val", type=int, default=2_500)
    p.add_argument("--test", "--n-test", dest="n_test", type=int, default=0)
    p.add_argument("--seed", "--data-seed", dest="data_seed", type=int, default=0)
    p.add_argument("--preset", default="model_a",
                   help="simulation preset of the dataset, when the driver simulates it")
    p.add_argument("--sim-set", action="append", metavar="KEY=VALUE",
                   help="simulator override for --stage simulate (e.g. image_size=32)")
    p.add_argument("--runs", type=Path, default=Path("/tmp/bench_runs"))
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="cpu: --gpus / --gpu-counts become concurrent CPU processes")
    p.add_argument("--gpus", type=int, default=1, help="concurrent jobs (one GPU each)")
    p.add_argument("--jobs-per-gpu", type=int, default=1,
                   help="--stage accuracy: concurrent jobs on each GPU (they share its speed)")
    p.add_argument("--job-minutes", type=float, default=30.0,
                   help="wall limit per training job (killed 1 min after)")
    p.add_argument("--budget-min", type=float, default=0.0,
                   help="wall budget of this whole command (0: none); jobs are clipped to it")
    p.add_argument("--deadline", type=float, default=0.0,
                   help="unix time by which this command must be done (shared by chained stages)")
    p.add_argument("--eval-minutes", type=float, default=1.0,
                   help="budget reserved for evaluating each job after training")
    p.add_argument("--eval-split", default="test", choices=["test", "val"])
    p.add_argument("--notebook-epochs", type=int, default=4)
    p.add_argument("--notebook-warmup", type=int, default=1)
    p.add_argument("--fast-epochs", type=int, default=12)
    p.add_argument("--seed-epochs", type=int, default=2)
    p.add_argument("--fast-eager-epochs", type=int, default=0,
                   help="--stage speed: also time the fast recipe with compile=off")
    p.add_argument("--sim-epochs", type=int, default=0,
                   help="--stage speed: also time the fast recipe on fresh simulated images "
                        "(sim:PRESET of the data, sim_steps_per_epoch steps per epoch)")
    p.add_argument("--models", default="densenet_cbam",
                   help="name:epochs[:recipe[:train]],...; train 'sim' = fresh simulated images")
    p.add_argument("--model", default="densenet_cbam", help="--stage ddp: the model")
    p.add_argument("--recipe", default="fast", choices=["fast", "seed"], help="--stage ddp")
    p.add_argument("--epochs", type=int, default=3, help="--stage ddp: epochs per run")
    p.add_argument("--gpu-counts", default="1,2", help="--stage ddp: e.g. 1,2,4")
    p.add_argument("--per-gpu-batch", type=int, default=0,
                   help="--stage ddp: keep this batch per GPU (default: same global batch)")
    p.add_argument("--set", action="append", help="extra --set for darklens train")
    p.add_argument("--json", type=Path, required=True)
    a = p.parse_args(argv)
    if a.gpus < 1 or a.jobs_per_gpu < 1:
        p.error("--gpus and --jobs-per-gpu must be at least 1")
    signal.signal(signal.SIGTERM, _on_sigterm)

    import torch

    result = {"stage": a.stage, "argv": sys.argv[1:],
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "cuda_devices": torch.cuda.device_count(), "cpu_count": os.cpu_count(),
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "data": {"path": str(a.data), "preset": a.preset, "n_train_per_class": a.n_train,
                       "n_val_per_class": a.n_val, "n_test_per_class": a.n_test,
                       "seed": a.data_seed}}
    a.runs.mkdir(parents=True, exist_ok=True)
    if a.stage == "simulate":
        stage_simulate(a, result)
    else:
        result["simulate_s"] = simulate(a.data, a.n_train, a.n_val, a.n_test, a.data_seed,
                                        a.sim_set, a.preset)
        result["pack_s"] = pack(a.data)
        result["data"] = _data_record(a.data, result["data"])
        {"speed": stage_speed, "accuracy": stage_accuracy, "ddp": stage_ddp}[a.stage](a, result)
    result["driver_wall_s"] = time.monotonic() - T0
    write_json(a.json, result)
    summary = {k: v for k, v in result.items()
               if not isinstance(v, (dict, list)) and k != "table_md"}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
