"""Compare two classifiers scored on the same test images: a paired bootstrap, and their average.

    darklens evaluate RUN_A DATA --split test --out A
    darklens evaluate RUN_B DATA --split test --out B
    PYTHONPATH=src python benchmarks/compare_predictions.py A/predictions.csv B/predictions.csv \\
        --json out.json

Two intervals measured apart overlap even when one model is better on nearly every image, so
the difference B - A is bootstrapped over images, both models resampled together. Also scores
the average of the two softmax outputs. The files must list the same image names and labels in
the same order, and where a report.json lies beside each, both must have scored the same data
folder and split (names like test/no/0.npy alone do not tell two simulations apart).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from darklens import CLASSES
from darklens.errors import DarklensError
from darklens.evaluation.metrics import compute_metrics, resampled_macro_auc
from darklens.evaluation.report import read_predictions_csv


def _check_same_data(a: Path, b: Path) -> None:
    """Refuse predictions of two different data folders or splits (when their reports say)."""
    scored = []
    for csv_path in (a, b):
        report = csv_path.with_name("report.json")
        try:
            fields = json.loads(report.read_text())
            # the folder as typed on the command line: normalise "x/" and "./x" before comparing
            scored.append({"data": os.path.normpath(str(fields.get("data"))),
                           "split": fields.get("split")})
        except (OSError, ValueError, AttributeError):
            return  # no readable report beside it: the names and labels are all there is
    if scored[0] != scored[1]:
        raise DarklensError(f"{a} and {b}: scored different data ({scored[0]['data']}, split "
                            f"{scored[0]['split']} vs {scored[1]['data']}, split "
                            f"{scored[1]['split']})")


def paired_differences(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray,
                       n_bootstrap: int, seed: int = 0, chunk: int = 64) -> np.ndarray:
    """(n_bootstrap, 2): B - A in accuracy and macro AUC, both models on the same resample."""
    rng = np.random.default_rng(seed)
    right_a, right_b = probs_a.argmax(1) == labels, probs_b.argmax(1) == labels
    out = []
    for start in range(0, n_bootstrap, chunk):
        idx = rng.integers(0, len(labels), size=(min(chunk, n_bootstrap - start), len(labels)))
        out.append(np.stack([right_b[idx].mean(1) - right_a[idx].mean(1),
                             resampled_macro_auc(labels, probs_b, idx)
                             - resampled_macro_auc(labels, probs_a, idx)],
                            axis=1))
    return np.concatenate(out)


def compare(a: Path, b: Path, n_bootstrap: int = 2000, seed: int = 0) -> dict:
    """Accuracy and macro AUC of A, B and their average; B - A with a paired 95% interval."""
    if n_bootstrap < 1:
        raise DarklensError(f"--bootstrap {n_bootstrap}: need at least one resample")
    paths_a, labels, probs_a = read_predictions_csv(a)
    paths_b, labels_b, probs_b = read_predictions_csv(b)
    if paths_a != paths_b or not np.array_equal(labels, labels_b):
        raise DarklensError(f"{a} and {b}: not the same image names and labels in the same order")
    _check_same_data(a, b)
    missing = [c for k, c in enumerate(CLASSES) if not (labels == k).any()]
    if missing:
        raise DarklensError(f"{a}: no {', '.join(missing)} images, so no macro AUC to compare")
    result = {}
    for name, probs in (("a", probs_a), ("b", probs_b), ("average", (probs_a + probs_b) / 2)):
        m = compute_metrics(labels, probs, n_bootstrap=0)
        result[name] = {"accuracy": m["accuracy"], "auc_macro": m["auc"]["macro"]}
    diffs = paired_differences(labels, probs_a, probs_b, n_bootstrap, seed)
    d_auc = diffs[np.isfinite(diffs[:, 1]), 1]
    if len(d_auc) == 0:
        raise DarklensError(f"{a}: every resample holds a single class; too few images")
    right_a, right_b = probs_a.argmax(1) == labels, probs_b.argmax(1) == labels
    result["b_minus_a"] = {
        "accuracy": result["b"]["accuracy"] - result["a"]["accuracy"],
        "accuracy_ci95": np.percentile(diffs[:, 0], [2.5, 97.5]).tolist(),
        "auc_macro": result["b"]["auc_macro"] - result["a"]["auc_macro"],
        "auc_macro_ci95": np.percentile(d_auc, [2.5, 97.5]).tolist(),
        # the images one model gets right and the other wrong: the evidence behind the difference
        "only_a_right": int((right_a & ~right_b).sum()),
        "only_b_right": int((right_b & ~right_a).sum()),
    }
    result.update(a_file=str(a), b_file=str(b), n=int(len(labels)), n_bootstrap=n_bootstrap,
                  n_bootstrap_auc=int(len(d_auc)), seed=seed)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="predictions.csv of model A (the baseline)")
    p.add_argument("b", type=Path, help="predictions.csv of model B, same images")
    p.add_argument("--bootstrap", type=int, default=2000, help="resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    try:
        if args.json and not args.json.parent.is_dir():
            raise DarklensError(f"{args.json}: its folder does not exist")
        r = compare(args.a, args.b, n_bootstrap=args.bootstrap, seed=args.seed)
    except DarklensError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name in ("a", "b", "average"):
        print(f"{name:8s} accuracy {r[name]['accuracy']:.4f}  macro AUC {r[name]['auc_macro']:.4f}")
    d = r["b_minus_a"]
    print(f"B - A    accuracy {d['accuracy']:+.4f} [{d['accuracy_ci95'][0]:+.4f}, "
          f"{d['accuracy_ci95'][1]:+.4f}]  macro AUC {d['auc_macro']:+.4f} "
          f"[{d['auc_macro_ci95'][0]:+.4f}, {d['auc_macro_ci95'][1]:+.4f}]  "
          f"(only A right: {d['only_a_right']}, only B right: {d['only_b_right']}; n={r['n']})")
    if args.json:
        args.json.write_text(json.dumps(r, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
