"""``darklens demo``: the whole job on a 2-core CPU, no GPU and no download.

1. simulate a small ``model_a`` dataset (the central 64x64 pixels at the preset's 0.05"/px: the
   Einstein ring and its substructure at full resolution, at a fifth of the pixels);
2. train a small network on it for a few CPU minutes;
3. evaluate it on its test split: ``OUT/report.json``, ``OUT/report.md`` and the plots;
4. evaluate each shipped pretrained model on a freshly simulated full-size test set (new seed);
5. print the results side by side; the last lines say where the report is.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from darklens import CLASSES
from darklens.config import atomic_write_text
from darklens.errors import DarklensError

#: the demo's dataset: model_a physics on a 64x64 crop of the 150x150 field, with the substructure
#: mass raised from the preset's 1-3% to 15-25% of the Einstein mass so that a small CPU model
#: learns it in minutes (at the preset's fractions a CPU model stays near chance in that time; the
#: GPU-trained pretrained models are scored on the unmodified preset).
DEMO_SIM = {"image_size": "64", "sub_mass_fraction": "[0.15, 0.25]",
            "vort_mass_fraction": "[0.15, 0.25]"}
DEMO_COUNTS = {"n_train": 1000, "n_val": 150, "n_test": 300}  # per class
DEMO_SEED = 2026
DEMO_MODEL = "resnet_tiny"
DEMO_TRAIN = {"epochs": 10, "batch": 64}
#: a fresh full-size model_a test set for the shipped pretrained models (seed never trained on)
PRETRAINED_TEST = {"n_train": 0, "n_val": 0, "n_test": 60}
PRETRAINED_TEST_SEED = 777_001


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


#: marker file: inside each folder the demo finished, and in OUT for folders it is still making
MARKER_NAME = ".darklens-demo"
DEMO_FOLDERS = ("data", "run", "pretrained-test")
#: what the demo writes into OUT itself (evaluate's report of the demo model, and demo.json)
DEMO_FILES = ("report.json", "report.md", "roc.png", "confusion.png", "calibration.png",
              "examples.png", "predictions.csv", "demo.json")


def _pending(out: Path) -> set[str]:
    """Folders of ``out`` the demo created but has not marked yet (an interrupted stage)."""
    try:
        record = json.loads((out / MARKER_NAME).read_text())
        return {str(name) for name in record["pending"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _write_pending(out: Path, names: set[str]) -> None:
    atomic_write_text(out / MARKER_NAME, json.dumps({"pending": sorted(names)}) + "\n")


def _old_demo_report(out: Path, path: Path) -> bool:
    """A ``pretrained-<name>`` report folder of a demo from before these were marked: in a
    demo's ``out``, holding evaluate's report files and nothing else."""
    if not (out / MARKER_NAME).is_file() or not path.name.startswith("pretrained-"):
        return False
    if not path.is_dir() or path.is_symlink():
        return False
    return {p.name for p in path.iterdir()} <= set(DEMO_FILES) - {"demo.json"}


def claim_folders(out: Path, names: list[str] | tuple[str, ...],
                  files: tuple[str, ...] = DEMO_FILES) -> dict[str, Path]:
    """Give the demo empty folders ``out/<name>``, deleting only ones an earlier demo made.

    A folder is the demo's when it holds the marker file (written by :func:`mark_folder` once
    its stage finished), or when ``out``'s own marker lists it as pending: created by a demo
    that was interrupted before it could mark it (a marker cannot go in first:
    ``simulate_dataset`` refuses a non-empty folder). Every name is checked before anything is
    deleted, so a refusal leaves ``out`` as it was.

    The ``files`` the demo writes into ``out`` itself are replaced only where ``out`` holds
    the demo's marker (an earlier demo wrote there); anywhere else they are the user's.

    Raises:
        DarklensError: ``out/<name>`` or ``out/<file>`` exists and was not made by the demo.
    """
    out = Path(out)
    pending = _pending(out)
    if not (out / MARKER_NAME).is_file():
        theirs = [out / f for f in files if (out / f).exists() or (out / f).is_symlink()]
        if theirs:
            raise DarklensError(f"{theirs[0]} exists and was not made by darklens demo; "
                                "choose another --out")
    for name in names:
        path = out / name
        ours = (name in pending or (path / MARKER_NAME).is_file()
                or _old_demo_report(out, path))
        if (path.exists() or path.is_symlink()) and not ours:
            raise DarklensError(f"{path} exists and was not made by darklens demo; "
                                "choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    _write_pending(out, pending | set(names))  # before creating: an interruption stays known
    folders = {}
    for name in names:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()  # a file or link of that name: remove the link, never its target
        path.mkdir()
        folders[name] = path
    return folders


def mark_folder(path: Path) -> None:
    """Mark a finished demo folder as the demo's own, and drop it from ``out``'s pending list."""
    (path / MARKER_NAME).write_text("made by darklens demo; a rerun replaces this folder\n")
    out = path.parent
    _write_pending(out, _pending(out) - {path.name})


def run_demo(out: str | Path = "runs/demo", device: str = "auto") -> dict:
    """Run the demo and return ``{"demo": report, "pretrained": {name: report}}``."""
    from darklens.checkpoint import list_pretrained
    from darklens.evaluation import evaluate
    from darklens.sim import simulate_dataset
    from darklens.train import train

    out = Path(out)
    started = time.perf_counter()
    shipped = list_pretrained()
    # Claim every folder up front: a foreign folder stops the demo before minutes of work.
    report_folders = tuple(f"pretrained-{item['name']}" for item in shipped)
    folders = claim_folders(out, (DEMO_FOLDERS + report_folders) if shipped else
                            DEMO_FOLDERS[:2])

    data = folders["data"]
    _say(f"1/4 simulating model_a ({DEMO_SIM['image_size']}x{DEMO_SIM['image_size']} crop, "
         f"{DEMO_COUNTS['n_train']}/{DEMO_COUNTS['n_val']}/{DEMO_COUNTS['n_test']} "
         f"train/val/test per class) -> {data}")
    simulate_dataset(data, preset="model_a", seed=DEMO_SEED, device=device,
                     overrides=dict(DEMO_SIM), **DEMO_COUNTS)
    mark_folder(data)

    run = folders["run"]
    _say(f"2/4 training {DEMO_MODEL} for {DEMO_TRAIN['epochs']} epochs -> {run}")
    train(str(data), model=DEMO_MODEL, out=run, recipe="fast", epochs=DEMO_TRAIN["epochs"],
          batch=DEMO_TRAIN["batch"], device=device, seed=0)
    mark_folder(run)

    _say(f"3/4 evaluating on the test split -> {out}")
    demo_report = evaluate(run, data, split="test", out=out, device=device)

    results = {"demo": demo_report, "pretrained": {}}
    if shipped:
        test_data = folders["pretrained-test"]
        _say(f"4/4 scoring {len(shipped)} shipped pretrained model(s) on a fresh model_a test "
             f"set ({PRETRAINED_TEST['n_test']} per class, seed {PRETRAINED_TEST_SEED})")
        simulate_dataset(test_data, preset="model_a", seed=PRETRAINED_TEST_SEED, device=device,
                         **PRETRAINED_TEST)
        mark_folder(test_data)
        for item in shipped:
            name = item["name"]
            results["pretrained"][name] = evaluate(
                f"pretrained:{name}", test_data, split="test",
                out=folders[f"pretrained-{name}"], device=device)
            mark_folder(folders[f"pretrained-{name}"])
    else:
        _say("4/4 no pretrained model is shipped with this install: skipped")

    (out / "demo.json").write_text(json.dumps(
        {"demo": {"model": DEMO_MODEL, "sim": DEMO_SIM, "counts": DEMO_COUNTS,
                  "seed": DEMO_SEED, "train": DEMO_TRAIN},
         "pretrained_test": {**PRETRAINED_TEST, "seed": PRETRAINED_TEST_SEED},
         "macro_auc": {k: v["auc"]["macro"] for k, v in
                       [("demo", demo_report), *results["pretrained"].items()]},
         "seconds": round(time.perf_counter() - started, 1)}, indent=2) + "\n")
    print()
    print(side_by_side(results))
    print()
    _say(f"finished in {time.perf_counter() - started:.0f} s")
    _say(f"report: {out / 'report.md'} (numbers: {out / 'report.json'})")
    return results


def side_by_side(results: dict) -> str:
    """A plain-text table: the demo's own model next to each shipped pretrained model."""
    columns = [(f"demo ({DEMO_MODEL})", results["demo"])]
    columns += [(f"pretrained:{n}", r) for n, r in results["pretrained"].items()]
    rows = [("images", lambda r: f"{r['n']}"),
            ("accuracy", lambda r: f"{r['accuracy']:.4f}"),
            ("macro F1", lambda r: f"{r['macro_f1']:.4f}"),
            *[(f"AUC {c}", lambda r, c=c: _fmt(r["auc"][c])) for c in CLASSES],
            ("AUC micro", lambda r: _fmt(r["auc"]["micro"])),
            ("AUC macro", lambda r: _fmt(r["auc"]["macro"])),
            ("macro AUC 95% CI", lambda r: "[{:.3f}, {:.3f}]".format(*r["ci95"]["macro_auc"])),
            ("ECE", lambda r: f"{r['ece']:.4f}")]
    width = max(len(c) for c, _ in columns) + 2
    lines = [f"{'':<18}" + "".join(f"{name:>{width}}" for name, _ in columns)]
    for label, fmt in rows:
        lines.append(f"{label:<18}" + "".join(f"{fmt(r):>{width}}" for _, r in columns))
    return "\n".join(lines)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
