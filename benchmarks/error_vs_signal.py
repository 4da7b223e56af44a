"""Which images does a classifier miss? Its test predictions against each image's substructure.

``darklens evaluate`` writes ``predictions.csv`` (path, label, probabilities, prediction). A
simulated dataset's images are fixed by (seed, split, class, index), so the substructure of every
sphere and vort test image can be drawn again and measured as in ``substructure_snr.py``:

* the ideal-observer chi-square: the image with and without its substructure, over the noise;
* with ``--refit N``, for N sphere images (the lowest indices: a random sample), the chi-square
  left after the best smooth lens and source are re-fitted, the part no smooth model absorbs.

Binning the images by it says whether the misses are the faint ones, and so how much of the gap
to a target lies in images whose substructure is barely in the data.

    PYTHONPATH=src python benchmarks/error_vs_signal.py --data /tmp/ma \\
        --predictions RUN/eval_test/predictions.csv --refit 96 --json out.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
import substructure_snr as snr  # noqa: E402

from darklens import CLASSES  # noqa: E402
from darklens.errors import DarklensError  # noqa: E402
from darklens.evaluation.report import read_predictions_csv  # noqa: E402
from darklens.sim.presets import get_config  # noqa: E402
from darklens.sim.rng import SPLITS  # noqa: E402


def dataset_config(data: Path):
    """The simulator config and seed that wrote ``data`` (its config.yaml)."""
    path = data / "config.yaml"
    if not path.is_file():
        raise SystemExit(f"{path}: missing; --data must be a dataset written by darklens simulate")
    record = yaml.safe_load(path.read_text())
    overrides = {k: v for k, v in record["config"].items() if k != "preset"}
    return get_config(record["preset"], overrides), int(record["seed"])


def read_predictions(path: Path, split: str) -> dict[str, dict[int, str]]:
    """class -> image index -> predicted class, for the rows of ``split`` (test/sphere/17.npy)."""
    try:
        paths, _, probs = read_predictions_csv(path)
    except DarklensError as e:
        raise SystemExit(str(e)) from None
    out: dict[str, dict[int, str]] = {c: {} for c in CLASSES}
    for name, p in zip(paths, probs, strict=True):
        parts = Path(name).parts
        if len(parts) != 3 or parts[0] != split or parts[1] not in CLASSES:
            raise SystemExit(f"{path}: row {name!r} is not {split}/CLASS/INDEX.npy")
        out[parts[1]][int(Path(parts[2]).stem)] = CLASSES[int(np.argmax(p))]  # evaluate's pred
    return out


def check_params(data: Path, split: str, label: int, indices: np.ndarray, config,
                 seed: int) -> float:
    """Largest |theta_E| difference between the re-drawn parameters and the dataset's
    params.csv: a check that the images measured are the ones the classifier saw (theta_E is
    drawn from the same per-image key as the substructure)."""
    path = data / "params.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: missing; it lets this script check the images it re-draws")
    saved = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] == split and int(row["label"]) == label:
                saved[int(row["index"])] = float(row["theta_E"])
    missing = sorted(set(int(i) for i in indices) - set(saved))
    if missing:
        raise SystemExit(f"{path}: no {split} row for class {CLASSES[label]} index {missing[0]}")
    drawn = snr._drawn_params(config, label, 0, seed, SPLITS[split], torch.as_tensor(indices))
    diff = max(abs(saved[int(i)] - float(t)) for i, t in zip(indices, drawn["theta_E"]))
    if diff > 1e-5:
        raise SystemExit(f"{path}: re-drawn parameters differ from the dataset's by {diff:.3g}")
    return diff


def binned(values: np.ndarray, correct: np.ndarray, flagged: np.ndarray,
           edges: list[float]) -> list[dict]:
    """Per chi-square bin: images, share classified right, share called anything but "no"
    (``chi2_to`` None: no upper edge)."""
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (values >= lo) & (values < hi)
        n = int(inside.sum())
        rows.append({"chi2_from": lo, "chi2_to": None if math.isinf(hi) else hi, "images": n,
                     "right": float(correct[inside].mean()) if n else None,
                     "not_called_no": float(flagged[inside].mean()) if n else None})
    return rows


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if len(values) else None


def quantile_edges(values: np.ndarray, k: int) -> list[float]:
    """Edges of ``k`` equally filled bins (exact: rounding them would move images across)."""
    return [0.0, *map(float, np.quantile(values, np.linspace(0, 1, k + 1)[1:-1])), float("inf")]


def _share(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def table(name: str, rows: list[dict]) -> str:
    lines = [f"| {name} chi-square | images | classified right | not called \"no\" |",
             "|---|---:|---:|---:|"]
    for r in rows:
        hi = "inf" if r["chi2_to"] is None else f"{r['chi2_to']:,.4g}"
        lines.append(f"| [{r['chi2_from']:,.4g}, {hi}) | {r['images']} | {_share(r['right'])} "
                     f"| {_share(r['not_called_no'])} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the simulated dataset evaluated")
    ap.add_argument("--predictions", type=Path, required=True, help="darklens evaluate's CSV")
    ap.add_argument("--split", default="test")
    ap.add_argument("--bins", type=int, default=5, help="quantile bins per class")
    ap.add_argument("--refit", type=int, default=0,
                    help="also re-fit the smooth model for this many sphere images")
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    config, seed = dataset_config(a.data)
    preds = read_predictions(a.predictions, a.split)
    if not all(preds.values()):
        raise SystemExit(f"{a.predictions}: needs {a.split} images of every class "
                         f"({', '.join(CLASSES)})")
    no_rows = preds["no"].values()
    result = {"data": str(a.data), "predictions": str(a.predictions), "split": a.split,
              "preset": config.preset, "seed": seed,
              "no": {"images": len(no_rows),
                     "called_no": float(np.mean([r == "no" for r in no_rows]))}}
    print(f"no: {result['no']['images']} images, {result['no']['called_no']:.3f} called \"no\"")
    for label, name in ((1, "sphere"), (2, "vort")):
        rows = preds[name]
        idx = np.array(sorted(rows))
        check_params(a.data, a.split, label, idx, config, seed)
        x2 = snr.substructure_chi2(config, label, 0, seed, SPLITS[a.split], torch.as_tensor(idx))
        correct = np.array([rows[i] == name for i in idx])
        flagged = np.array([rows[i] != "no" for i in idx])
        bins = binned(x2, correct, flagged, quantile_edges(x2, a.bins))
        result[name] = {"images": len(idx), "right": float(correct.mean()),
                        "chi2_p10_p50_p90": [float(np.percentile(x2, p)) for p in (10, 50, 90)],
                        "chi2_missed_p50": _median(x2[~correct]),
                        "chi2_right_p50": _median(x2[correct]), "bins": bins}
        print(table(name, bins), flush=True)
        if name == "sphere" and a.refit:
            sub = idx[:a.refit]
            fixed, refit, _ = snr.refit_chi2(config, label, 0, seed, iters=a.iters,
                                             split=SPLITS[a.split], indices=torch.as_tensor(sub))
            ok, flag = correct[:a.refit], flagged[:a.refit]
            edges = [0.0, 30.0, 100.0, 300.0, float("inf")]
            result[name]["refit"] = {
                "images": len(sub), "iters": a.iters,
                "absorbed_median": float(np.median(1 - refit / fixed)),
                "bins": binned(refit, ok, flag, edges),
                "spearman_refit_vs_fixed": float(spearmanr(refit, fixed)[0])}
            print(f"sphere, first {len(sub)} images, smooth model re-fitted (absorbed, median: "
                  f"{result[name]['refit']['absorbed_median']:.2f})")
            print(table("sphere re-fitted", result[name]["refit"]["bins"]), flush=True)
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
