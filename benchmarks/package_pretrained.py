"""Package a trained run as a shipped pretrained model: ``src/darklens/pretrained/<name>.*``.

    python benchmarks/package_pretrained.py runs/dense --report reports/dense/report.json \\
        --name densenet_cbam_model_a --dataset-seed 1 --card "NVIDIA H100 80GB" \\
        --command "darklens train data/model_a --model densenet_cbam --out runs/dense ..." \\
        --out src/darklens/pretrained

Copies RUN's best weights to ``<out>/<name>.safetensors`` and writes ``<out>/<name>.json``: the
run's checkpoint JSON (so :func:`darklens.checkpoint.load_checkpoint` reads it unchanged) with

* ``metrics``: the test-split numbers of the ``darklens evaluate`` report (accuracy, macro F1,
  AUCs, bootstrap 95% intervals, images per class, split, preset, dataset seed), which
  ``darklens models`` lists and ``tests/test_pretrained.py`` re-checks on a fresh test set;
* ``trained``: how the weights were made (command, card, date, dataset seed, recipe, epochs,
  train/val sizes, darklens version, the best epoch's validation row);
* ``description`` and ``sha256`` (of the weights, also in ``weights_sha256``, which
  ``load_checkpoint`` verifies).

Refuses weights over :data:`MAX_WEIGHTS_BYTES` (they ship inside the wheel) and a report that
scored another model. Both files are written atomically, weights first, so a JSON on disk always
describes complete weights.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from darklens import CLASSES, __version__
from darklens.checkpoint import META_SUFFIX, WEIGHTS_SUFFIX, file_sha256, read_meta
from darklens.config import atomic_write_text
from darklens.errors import DarklensError

#: shipped weights live inside the package: keep the wheel small (issue #5: <= 20 MB each,
#: read as decimal megabytes, the stricter reading; benchmarks/half_checkpoint.py halves a run)
MAX_WEIGHTS_BYTES = 20_000_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise DarklensError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DarklensError(f"{path}: not a readable {what} ({e})") from None
    if not isinstance(value, dict):
        raise DarklensError(f"{path}: {what} is not a JSON object")
    return value


def _run_checkpoint(run: Path) -> tuple[Path, Path]:
    """The run's best checkpoint pair (``best.*``: chosen by validation, never by the test)."""
    if not run.is_dir():
        raise DarklensError(f"{run}: not a run folder")
    weights, meta = run / ("best" + WEIGHTS_SUFFIX), run / ("best" + META_SUFFIX)
    for path in (weights, meta):
        if not path.is_file():
            raise DarklensError(f"{path}: missing (RUN must hold the best checkpoint of a run)")
    return weights, meta


def _check_report_matches(report: dict, report_path: Path, meta: dict, run: Path) -> None:
    """The report must score this run's best weights: same architecture, same run folder.

    ``darklens evaluate`` records the weights file it read in ``report["model"]``; the report may
    come from another machine (absolute paths differ), so its last two path parts are compared.
    """
    if report.get("model_name") != meta["model"]:
        raise DarklensError(f"{report_path}: scores model {report.get('model_name')!r}, but "
                            f"{run} holds {meta['model']!r}")
    source = Path(str(report.get("model", "")))
    if (source.parent.name, source.name) != (run.name, "best" + WEIGHTS_SUFFIX):
        raise DarklensError(f"{report_path}: scores {source}, not {run.name}/best{WEIGHTS_SUFFIX} "
                            "(evaluate the run folder itself)")
    scored = report.get("weights_sha256")  # reports since session 2 name the exact weights
    if scored is not None and meta.get("weights_sha256") not in (None, scored):
        raise DarklensError(f"{report_path}: scores weights with sha256 {scored[:12]}..., not "
                            f"{run.name}/best{WEIGHTS_SUFFIX} ({meta['weights_sha256'][:12]}...)")
    if report.get("split") != "test":
        raise DarklensError(f"{report_path}: split is {report.get('split')!r}; ship numbers from "
                            "the held-out test split (darklens evaluate --split test)")
    for key in ("accuracy", "macro_f1", "auc", "ci95", "confusion_matrix", "n"):
        if key not in report:
            raise DarklensError(f"{report_path}: not a darklens evaluate report (no {key!r})")


def _dataset_record(data) -> dict:
    """A simulated dataset folder's config.yaml (preset, seed) when it can be read here, else {}.

    The report or run may come from another machine, where the data folder stayed.
    """
    if not data or str(data).startswith("sim:"):
        return {}
    try:
        record = yaml.safe_load((Path(str(data)) / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return record if isinstance(record, dict) and "preset" in record else {}


def recorded_metrics(report: dict, *, preset: str, dataset_seed: int) -> dict:
    """The numbers ``darklens models`` shows and the shipped-model test re-checks."""
    matrix = report["confusion_matrix"]
    return {
        "split": report["split"],
        "preset": preset,
        "dataset_seed": dataset_seed,
        "n": report["n"],
        "n_per_class": {c: int(sum(matrix[i])) for i, c in enumerate(CLASSES)},
        "tta": bool(report.get("tta", False)),
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "auc_macro": report["auc"]["macro"],
        "auc_micro": report["auc"]["micro"],
        "auc": {c: report["auc"][c] for c in CLASSES},
        "ece": report.get("ece"),
        "ci95": {"accuracy": report["ci95"]["accuracy"],
                 "auc_macro": report["ci95"]["macro_auc"]},
    }


def _training_record(meta: dict, *, command: str, card: str, date: str,
                     dataset_seed: int | None) -> dict:
    config = meta.get("config") or {}
    info = config.get("data_info") or {}
    row = meta.get("metrics") or {}
    return {
        "command": command,
        "card": card,
        "date": date,
        "dataset_seed": dataset_seed,
        "data": config.get("data"),
        "recipe": config.get("recipe"),
        "epochs": config.get("epochs"),
        "best_epoch": meta.get("epoch"),
        "seed": meta.get("seed"),
        # sim:PRESET runs stream their training images: no fixed train size, count per epoch
        "n_train": info.get("n_train"),
        "n_val": info.get("n_val"),
        "train_images_per_epoch": row.get("train_images"),
        "world_size": config.get("world_size"),
        "darklens_version": meta.get("darklens_version"),
        "best_epoch_val": row,
    }


def _copy_weights(src: Path, dest: Path) -> None:
    """Copy atomically, readable by everyone (a wheel keeps the file mode)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def package(run: str | Path, *, report: str | Path, name: str, command: str, card: str,
            dataset_seed: int, out: str | Path, date: str | None = None,
            description: str = "", preset: str | None = None) -> tuple[Path, Path]:
    """Write ``<out>/<name>.safetensors`` and ``<out>/<name>.json`` from RUN and its report.

    Args:
        run: training run folder (its ``best.*`` checkpoint is shipped).
        report: ``report.json`` of ``darklens evaluate RUN DATA --split test``.
        name: the shipped name (``pretrained:<name>``).
        command: the exact ``darklens train`` command line.
        card: the accelerator it trained on (e.g. ``NVIDIA H100 80GB HBM3``).
        dataset_seed: ``darklens simulate --seed`` of the training data (checked against its
            config.yaml when readable here); the recorded test seed is the test data's own,
            or this one when that cannot be read. A ``sim:PRESET`` run records no training
            dataset seed: it streamed fresh images from its own seed.
        out: destination folder (normally ``src/darklens/pretrained``).
        date: ``YYYY-MM-DD`` of training (default: today, UTC).
        description: one line shown next to the name.
        preset: simulation preset of the data (default: read from the data's config.yaml).

    Returns:
        The (weights, json) paths written.
    """
    run, report_path, out = Path(run), Path(report), Path(out)
    if not _NAME.match(name):
        raise DarklensError(f"--name {name!r}: use letters, digits, '_', '-' and '.'")
    if date is None:
        date = dt.datetime.now(dt.timezone.utc).date().isoformat()
    try:
        dt.date.fromisoformat(date)
    except ValueError:
        raise DarklensError(f"--date {date!r}: expected YYYY-MM-DD") from None
    weights_src, meta_src = _run_checkpoint(run)
    size = weights_src.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise DarklensError(f"{weights_src}: {size / 1e6:.2f} MB of weights exceed the "
                            f"{MAX_WEIGHTS_BYTES / 1e6:.0f} MB limit for shipped models (store "
                            "them as float16: benchmarks/half_checkpoint.py)")
    meta = read_meta(meta_src)
    sha = file_sha256(weights_src)
    if meta.get("weights_sha256") not in (None, sha):
        raise DarklensError(f"{weights_src}: does not match the sha256 in {meta_src.name}")
    report_data = _read_json(report_path, "evaluate report")
    _check_report_matches(report_data, report_path, meta, run)

    train_data = (meta.get("config") or {}).get("data")
    train_record = _dataset_record(train_data)
    test_record = _dataset_record(report_data.get("data"))
    if train_record and int(train_record.get("seed", dataset_seed)) != dataset_seed:
        raise DarklensError(f"--dataset-seed {dataset_seed}: the training data's config.yaml "
                            f"({train_data}) says seed {train_record['seed']}")
    sim_preset = str(train_data)[4:] if str(train_data).startswith("sim:") else None
    preset = preset or test_record.get("preset") or train_record.get("preset") or sim_preset
    if not preset:
        raise DarklensError(f"{report_path}: cannot read the data's config.yaml here to learn "
                            "its preset; pass --preset")
    # the test set's own seed when its config.yaml is readable (it may be a separate set)
    test_seed = int(test_record.get("seed", dataset_seed))

    meta.pop("source", None)
    # the training record keeps the run's own metrics (the best epoch's validation row) ...
    # a sim:PRESET run streamed fresh images from its own seed: no training dataset seed
    meta["trained"] = _training_record(meta, command=command, card=card, date=date,
                                       dataset_seed=None if sim_preset else dataset_seed)
    # ... before the test-split numbers take their place
    meta["metrics"] = recorded_metrics(report_data, preset=preset, dataset_seed=test_seed)
    if test_record.get("renderer"):  # the same seed renders other noise on the CPU and the GPU
        meta["metrics"]["renderer"] = test_record["renderer"]
    meta["trained"]["packaged_with"] = __version__
    meta["description"] = description
    meta["weights_file"] = name + WEIGHTS_SUFFIX
    meta["weights_sha256"] = meta["sha256"] = sha

    weights_dest, meta_dest = out / (name + WEIGHTS_SUFFIX), out / (name + META_SUFFIX)
    text = json.dumps(meta, indent=2, allow_nan=False) + "\n"  # fail before touching the disk
    _copy_weights(weights_src, weights_dest)
    if file_sha256(weights_dest) != sha:
        raise DarklensError(f"{weights_dest}: copy does not match {weights_src} (disk problem?)")
    atomic_write_text(meta_dest, text)
    return weights_dest, meta_dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="training run folder (its best.* is shipped)")
    p.add_argument("--report", required=True, help="report.json of darklens evaluate on test")
    p.add_argument("--name", required=True, help="shipped name: pretrained:<name>")
    p.add_argument("--command", required=True, help="the exact darklens train command")
    p.add_argument("--card", required=True, help="accelerator used for training")
    p.add_argument("--dataset-seed", type=int, required=True,
                   help="darklens simulate --seed of the training data (of the test data for "
                        "a sim:PRESET run, which streams its training images)")
    p.add_argument("--date", default=None, help="YYYY-MM-DD of training (default today, UTC)")
    p.add_argument("--description", default="", help="one line for darklens models")
    p.add_argument("--preset", default=None, help="data preset (default: the data's config)")
    p.add_argument("--out", default="src/darklens/pretrained", help="destination folder")
    a = p.parse_args(argv)
    try:
        weights, meta = package(a.run, report=a.report, name=a.name, command=a.command,
                                card=a.card, dataset_seed=a.dataset_seed, out=a.out,
                                date=a.date, description=a.description, preset=a.preset)
    except DarklensError as e:
        print(f"package_pretrained: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {weights} ({weights.stat().st_size / 1e6:.2f} MB) and {meta}")
    print("BENCHMARKS.md row:")
    print(benchmarks_row(a.name, json.loads(meta.read_text())))
    return 0


def benchmarks_row(name: str, meta: dict) -> str:
    """One markdown table row for BENCHMARKS.md: | name | model | test set | accuracy [CI] |
    macro AUC [CI] | card | date | command |."""
    m, t = meta["metrics"], meta["trained"]

    def ci(values) -> str:
        return "n/a" if not values else f"[{values[0]:.4f}, {values[1]:.4f}]"

    auc = "n/a" if m["auc_macro"] is None else f"{m['auc_macro']:.4f}"
    per_class = "+".join(str(v) for v in m["n_per_class"].values())
    return (f"| `pretrained:{name}` | `{meta['model']}` | {m['preset']} {m['split']} seed "
            f"{m['dataset_seed']}, {per_class} | {m['accuracy']:.4f} {ci(m['ci95']['accuracy'])} "
            f"| {auc} {ci(m['ci95']['auc_macro'])} | {t['card']} | {t['date']} "
            f"| `{t['command']}` |")


if __name__ == "__main__":
    sys.exit(main())
