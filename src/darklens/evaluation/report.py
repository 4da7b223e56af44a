"""``darklens evaluate``: score a checkpoint on one split and write the report folder.

OUT/report.json   numbers (schema in :func:`darklens.evaluation.metrics.compute_metrics`)
OUT/report.md     the table of numbers and the figures
OUT/roc.png, confusion.png, calibration.png, examples.png
OUT/predictions.csv  per image: path, label, p_no, p_sphere, p_vort, pred (for re-analysis)
"""

from __future__ import annotations

import csv
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from darklens import CLASSES
from darklens.config import atomic_write_text, check_output_dir
from darklens.errors import DarklensError
from darklens.evaluation.inference import enable_cudnn_autotune, predict_proba, resolve_device
from darklens.evaluation.metrics import compute_metrics, json_safe

ALL_SPLIT = "all"


def _choose_split(ds, data: str | Path, split: str):
    """The requested split; a missing one is an error that names the ones there are.

    No silent fallback: evaluating on another split than asked for could mean scoring the
    training images.
    """
    if split != ALL_SPLIT and split not in ds.splits:
        others = [s for s in ds.splits if s not in ("train", ALL_SPLIT)]
        if others:
            hint = f"choose one with --split {'|'.join(others)}"
        elif ds.splits == [ALL_SPLIT]:  # unsplit class folders: a held-out set, or not
            hint = ("its class folders have no splits: --split all scores every image (a run "
                    "that trained on them is refused)")
        else:
            hint = ("it holds training images only: score the model on a dataset with a test "
                    "split (e.g. darklens simulate OUT --preset model_a --train 0 --val 0 "
                    "--test 1000)")
        raise DarklensError(f"{data}: no {split!r} split to evaluate (available: "
                            f"{', '.join(ds.splits)}); {hint}")
    return ds.split(split)


def _refuse_training_images(part, ds, data: str | Path, meta: dict) -> None:
    """Never score an image the model trained on; warn about a dataset whose own splits leak.

    A run folder records its training images' content hashes (``train_sha256.txt``); any of
    them in the scored split is an error. Without that record (pretrained models, which trained
    on fresh simulated images), images this dataset also holds in its train split are a warning:
    the numbers may be fine for this model, but the dataset is not a clean benchmark.
    """
    from darklens.checkpoint import PRETRAINED_PREFIX
    from darklens.training.data import read_train_hashes, shared_images

    source = str(meta.get("source", ""))
    trained = (None if not source or source.startswith(PRETRAINED_PREFIX)
               else read_train_hashes(Path(source).parent))
    if trained:
        seen = shared_images(part.sha256, part.paths, trained)
        if seen:
            raise DarklensError(
                f"{data}: {len(seen)} of the {len(part)} images of split {part.name!r} are "
                f"images the model trained on (e.g. {seen[0]}; by content hash, "
                f"{Path(source).parent / 'train_sha256.txt'}); score a split it did not train on")
    if part.name not in ("train", ALL_SPLIT) and "train" in ds.splits:
        train = ds.split("train")
        leaked = shared_images(part.sha256, part.paths, train.sha256)
        if leaked:
            warnings.warn(f"{data}: {len(leaked)} images of split {part.name!r} are also in "
                          f"its train split (e.g. {leaked[0]}, by content hash)", stacklevel=3)


def predictions_csv(paths: list[str], probs: np.ndarray, labels: np.ndarray | None = None) -> str:
    """CSV text: ``path[, label], p_no, p_sphere, p_vort, pred`` (class names, not indices)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["path"] + (["label"] if labels is not None else [])
    writer.writerow(header + [f"p_{c}" for c in CLASSES] + ["pred"])
    pred = probs.argmax(axis=1)
    for i, path in enumerate(paths):
        row = [path] + ([CLASSES[labels[i]]] if labels is not None else [])
        # repr-exact floats so re-reading the CSV reproduces the report's numbers
        writer.writerow(row + [repr(float(p)) for p in probs[i]] + [CLASSES[pred[i]]])
    return buf.getvalue()


def read_predictions_csv(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read back an ``evaluate`` predictions.csv: (paths, labels as class indices, probs (N, K)).

    Every problem is one :class:`DarklensError` naming the file (and the row, where one is at
    fault), so scripts that compare runs fail with a line, not a traceback. Rows must be what
    :func:`predictions_csv` writes: probabilities in [0, 1] summing to 1, ``pred`` their argmax,
    each path once.
    """
    path = Path(path)
    columns = ["path", "label", *(f"p_{c}" for c in CLASSES), "pred"]
    paths, labels, probs, seen = [], [], [], set()
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header == [c for c in columns if c != "label"]:
                raise DarklensError(f"{path}: written by darklens predict (no label column); "
                                    "score labelled data with darklens evaluate")
            if header != columns:
                raise DarklensError(f"{path}: not an evaluate predictions.csv (header must be "
                                    f"{','.join(columns)})")
            for row in reader:
                n = reader.line_num
                try:
                    label, p = _row_label(row, columns), _row_probs(row)
                except ValueError as e:
                    raise DarklensError(f"{path}: row {n}: {e}") from None
                if row[0] in seen:
                    raise DarklensError(f"{path}: row {n}: {row[0]!r} appears twice")
                seen.add(row[0])
                paths.append(row[0])
                labels.append(label)
                probs.append(p)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        where = f"line {reader.line_num}: " if isinstance(e, csv.Error) else ""
        raise DarklensError(f"{path}: cannot read ({where}"
                            f"{getattr(e, 'strerror', None) or e})") from None
    if not paths:
        raise DarklensError(f"{path}: no rows")
    return paths, np.array(labels), np.array(probs)


def _row_label(row: list[str], columns: list[str]) -> int:
    if len(row) != len(columns):
        raise ValueError(f"{len(row)} fields, not {len(columns)}")
    if row[1] not in CLASSES:
        raise ValueError(f"label {row[1]!r} is not one of {', '.join(CLASSES)}")
    return CLASSES.index(row[1])


def _row_probs(row: list[str]) -> list[float]:
    probs = [float(v) for v in row[2:2 + len(CLASSES)]]
    if not all(0.0 <= p <= 1.0 for p in probs):  # also false for NaN
        raise ValueError("a probability is NaN or outside [0, 1]")
    if abs(sum(probs) - 1.0) > 1e-3:
        raise ValueError(f"probabilities sum to {sum(probs):.4g}, not 1")
    if row[-1] != CLASSES[int(np.argmax(probs))]:
        raise ValueError(f"pred {row[-1]!r} is not the most probable class")
    return probs


def _markdown(report: dict) -> str:
    auc, ci = report["auc"], report["ci95"]

    def num(v):
        return "n/a" if v is None else f"{v:.4f}"

    def interval(v):
        return "n/a" if v is None else f"[{v[0]:.4f}, {v[1]:.4f}]"

    cm = report["confusion_matrix"]
    lines = [
        f"# darklens evaluation: {report['split']} split",
        "",
        f"* model: `{report['model']}`",
        f"* data: `{report['data']}` ({report['n']} images)",
        f"* test-time augmentation: {'D4, 8 views averaged' if report['tta'] else 'none'}",
        "",
        "| metric | value | 95% CI (bootstrap) |",
        "|---|---|---|",
        f"| accuracy | {num(report['accuracy'])} | {interval(ci['accuracy'])} |",
        f"| macro F1 | {num(report['macro_f1'])} | |",
        f"| AUC macro | {num(auc['macro'])} | {interval(ci['macro_auc'])} |",
        f"| AUC micro | {num(auc['micro'])} | |",
        *(f"| AUC {c} (one-vs-rest) | {num(auc[c])} | |" for c in CLASSES),
        f"| ECE (15 bins) | {num(report['ece'])} | |",
        "",
        "AUCs are one-vs-rest; micro pools every (image, class) pair; macro averages the classes "
        "present in the split (an absent class has no AUC).",
        "",
        "## Confusion matrix (rows: true class, columns: predicted)",
        "",
        "| | " + " | ".join(CLASSES) + " |",
        "|---" * (len(CLASSES) + 1) + "|",
        *(f"| **{c}** | " + " | ".join(str(v) for v in cm[i]) + " |"
          for i, c in enumerate(CLASSES)),
        "",
        "## Figures",
        "",
        "![ROC curves](roc.png)",
        "",
        "![confusion matrix](confusion.png)",
        "",
        "![calibration](calibration.png)",
        "",
        "![most confident mistakes](examples.png)",
        "",
    ]
    return "\n".join(lines)


def evaluate(
    model: str | Path,
    data: str | Path,
    *,
    split: str = "test",
    out: str | Path,
    tta: bool = False,
    allow_pickle: bool = False,
    device: str = "auto",
    batch_size: int = 256,
    n_bootstrap: int = 1000,
    progress: bool = True,
) -> dict:
    """Score checkpoint ``model`` on ``split`` of ``data`` and write the report folder ``out``.

    Args:
        model: run folder (best checkpoint), checkpoint file or ``pretrained:<name>``.
        data: dataset folder or zip (any layout :func:`darklens.data.open_dataset` reads).
        split: ``val``, ``test`` or ``all`` (every split concatenated).
        out: report folder (created; files in it are replaced).
        tta: average the 8 D4 rotations/flips.
        allow_pickle: read pickled .npy files (runs code from the files).
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: images per forward pass.
        n_bootstrap: resamples for the 95% intervals.
        progress: progress bars on stderr.

    Returns:
        The report.json dict.
    """
    from darklens.checkpoint import load_checkpoint
    from darklens.data import open_dataset
    from darklens.evaluation import plots

    # before the model and the data: a bad --out must not cost a whole inference run
    out = check_output_dir(out)
    torch_device = resolve_device(device)
    enable_cudnn_autotune(torch_device)
    net, meta = load_checkpoint(model, device=torch_device)
    ds = open_dataset(data, allow_pickle=allow_pickle, progress=progress and sys.stderr.isatty())
    part = _choose_split(ds, data, split)
    if len(part) == 0:
        raise DarklensError(f"{data}: split {split!r} holds no images")
    _refuse_training_images(part, ds, data, meta)
    probs = predict_proba(net, meta, part.images, batch_size=batch_size, device=torch_device,
                          tta=tta, progress=progress)
    labels = np.asarray(part.labels, dtype=np.int64)

    report = compute_metrics(labels, probs, n_bootstrap=n_bootstrap)
    report.update({
        "model": meta.get("source", str(model)),
        "data": str(data),
        "split": split,
        "tta": bool(tta),
        "model_name": meta.get("model"),
        "weights_sha256": meta.get("weights_sha256"),  # ties the numbers to exact weights
    })
    report = json_safe(report)

    out.mkdir(parents=True, exist_ok=True)
    # report.json marks a complete folder: an old one must not sit beside half-written new files
    # if this run fails part way (it is written again last)
    (out / "report.json").unlink(missing_ok=True)
    plots.plot_roc(labels, probs, report, out / "roc.png")
    plots.plot_confusion(report["confusion_matrix"], out / "confusion.png")
    plots.plot_calibration(labels, probs, report["ece"], out / "calibration.png")
    plots.plot_examples(part.images, labels, probs, part.paths, out / "examples.png")
    atomic_write_text(out / "predictions.csv", predictions_csv(part.paths, probs, labels))
    atomic_write_text(out / "report.md", _markdown(report))
    # last, so a report.json on disk means the whole folder is complete
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    return report
