"""Does the substructure-mass curriculum learn model_a faster? Same run with and without it.

For each seed, two ``darklens train sim:PRESET`` runs side by side (one CPU thread or one
slot each), identical except ``--set sim_mass_boost=B --set sim_boost_fraction=F`` against
``--set sim_mass_boost=1`` (the fast recipe's curriculum is on for sim:model_a since session
9); then ``darklens evaluate`` scores both best checkpoints on one fixed test split (the
preset's own masses, a seed neither run trained on). Prints a table and writes the numbers as JSON.

    python benchmarks/curriculum.py --seeds 0 1 --json benchmarks/results/curriculum_cpu.json

``--variant KEY=VALUE ...`` asks another question the same way: the arms are "curriculum" (the
fast recipe as it is) and "variant", which adds those ``--set`` items (e.g.
``signal_weight=0.1``).

The defaults are a CPU-sized version of the question (resnet_tiny on 64x64 crops of model_a,
40 epochs of 6,400 images); on a GPU pass e.g. ``--model resnet18 --image-size 150 --batch
1024 --lr 2e-3 --steps 200 --device cuda --parallel 1``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def darklens(*args: str, threads: int, log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "darklens", *args]
    with open(log, "w") as f:
        if subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"failed: {' '.join(cmd)} (log: {log})")


def run_arm(a: argparse.Namespace, seed: int, arm: str, test_data: Path) -> dict:
    run = a.out / f"seed{seed}_{arm}"
    sets = [f"sim_set=[image_size={a.image_size}]", f"sim_steps_per_epoch={a.steps}",
            f"sim_val_per_class={a.val}"]
    if arm in ("curriculum", "variant") or a.variant:
        sets += [f"sim_mass_boost={a.boost}", f"sim_boost_fraction={a.fraction}"]
    else:  # the fast recipe trains sim:model_a with the curriculum unless told not to
        sets += ["sim_mass_boost=1"]
    if arm == "variant":
        sets += a.variant
    train = ["train", f"sim:{a.preset}", "--model", a.model, "--out", str(run), "--epochs",
             str(a.epochs), "--batch", str(a.batch), "--lr", str(a.lr), "--seed", str(seed),
             "--device", a.device, *[x for s in sets for x in ("--set", s)]]
    t0 = time.perf_counter()
    darklens(*train, threads=a.threads, log=a.out / f"seed{seed}_{arm}.log")
    train_s = time.perf_counter() - t0  # the whole command: start-up and validation too
    darklens("evaluate", str(run), str(test_data), "--split", "test", "--out",
             str(run / "eval_test"), "--device", a.device, threads=a.threads,
             log=a.out / f"seed{seed}_{arm}_eval.log")
    report = json.loads((run / "eval_test" / "report.json").read_text())
    return {"seed": seed, "arm": arm, "command": "darklens " + " ".join(train),
            "train_s": round(train_s, 1), "test_accuracy": report["accuracy"],
            "test_accuracy_ci95": report["ci95"]["accuracy"],
            "test_macro_auc": report["auc"]["macro"],
            "test_macro_auc_ci95": report["ci95"]["macro_auc"], "test_auc": report["auc"],
            "confusion_matrix": report["confusion_matrix"]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/curriculum"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--preset", default="model_a")
    ap.add_argument("--model", default="resnet_tiny")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=100, help="sim_steps_per_epoch")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--val", type=int, default=150, help="validation images per class")
    ap.add_argument("--test", type=int, default=1000, help="test images per class")
    ap.add_argument("--test-seed", type=int, default=2026)
    ap.add_argument("--boost", type=float, default=10.0)
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--parallel", type=int, default=2, help="runs at once")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--variant", nargs="+", default=[], metavar="KEY=VALUE",
                    help="compare the curriculum run with and without these --set items")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    test_data = a.out / "test"
    # the test folder is reused only if it was made, completely, with these settings
    made = a.out / "test.done"
    wanted = json.dumps([a.preset, a.image_size, a.test, a.test_seed])
    if not made.exists() or made.read_text() != wanted:
        if test_data.exists():
            raise SystemExit(f"{test_data} was made with other settings or not finished: "
                             "remove it or pick another --out")
        darklens("simulate", str(test_data), "--preset", a.preset, "--set",
                 f"image_size={a.image_size}", "--train", "0", "--val", "0", "--test",
                 str(a.test), "--seed", str(a.test_seed), "--device", a.device,
                 threads=a.threads * a.parallel, log=a.out / "simulate.log")
        made.write_text(wanted)
    arms = ("curriculum", "variant") if a.variant else ("baseline", "curriculum")
    jobs = [(seed, arm) for seed in a.seeds for arm in arms]
    with ThreadPoolExecutor(a.parallel) as pool:
        rows = list(pool.map(lambda job: run_arm(a, *job, test_data), jobs))
    print(f"{'seed':>4s} {'arm':12s} {'test acc [95% CI]':26s} {'macro AUC [95% CI]':26s} train s")
    for r in rows:
        acc, auc = r["test_accuracy_ci95"], r["test_macro_auc_ci95"]
        print(f"{r['seed']:4d} {r['arm']:12s} {r['test_accuracy']:.3f} [{acc[0]:.3f}, "
              f"{acc[1]:.3f}]{'':5s} {r['test_macro_auc']:.3f} [{auc[0]:.3f}, {auc[1]:.3f}]"
              f"{'':5s} {r['train_s']:.0f}")
    if a.json:
        a.json.write_text(json.dumps({"argv": argv if argv is not None else sys.argv[1:],
                                      "date": time.strftime("%Y-%m-%d"),
                                      "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
