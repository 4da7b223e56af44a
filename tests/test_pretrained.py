"""Shipped pretrained models reproduce their recorded accuracy; the packaging script works.

Every model in ``darklens/pretrained/`` is scored on a freshly simulated test set (a seed it
never saw) on the CPU: its recorded test accuracy must lie inside the fresh set's bootstrap 95%
interval. The packaging script is exercised end to end on a tiny model trained for one epoch.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bench_scripts import load_benchmark
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from darklens import CLASSES, checkpoint
from darklens.checkpoint import list_pretrained, load_checkpoint
from darklens.cli import main
from darklens.errors import DarklensError
from darklens.evaluation import compute_metrics, predict_proba

MAX_SHIPPED_BYTES = 20_000_000  # issue #5: weights <= 20 MB each (decimal, the strict reading)
FRESH_SEED = 424_242  # never a training seed: checked against each model's record below
FRESH_PER_CLASS = 40  # 120 images: ~30 s of densenet_cbam at 150x150 on 2 busy CPU cores
SHIPPED = list_pretrained()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- every shipped model ----------------------------------------------------------------------

def _shipped_files(name: str) -> tuple[bytes, dict]:
    folder = checkpoint._pretrained_dir()
    weights = folder.joinpath(name + ".safetensors").read_bytes()
    meta = json.loads(folder.joinpath(name + ".json").read_text())
    return weights, meta


def _fresh_test_set(preset: str, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from darklens.sim import simulate_batch

    labels = np.tile(np.arange(len(CLASSES)), per_class)
    images = []
    for start in range(0, len(labels), 60):  # batches keep the renderer's memory small
        batch, _, _ = simulate_batch(preset, labels=labels[start:start + 60].tolist(), seed=seed,
                                     split="test", start_index=start, device="cpu")
        images.append(batch.numpy())
    return np.concatenate(images), labels


@pytest.mark.parametrize("item", SHIPPED, ids=[p["name"] for p in SHIPPED])
def test_shipped_weights_are_small_and_match_their_sha256(item):
    weights, meta = _shipped_files(item["name"])
    assert len(weights) <= MAX_SHIPPED_BYTES
    assert meta["sha256"] == meta["weights_sha256"] == _sha256(weights)
    for key in ("accuracy", "ci95", "auc_macro", "n_per_class", "preset", "dataset_seed"):
        assert key in meta["metrics"], key
    for key in ("command", "card", "date", "recipe", "epochs"):
        assert meta["trained"].get(key) is not None, key
    # a training set's seed, or none for a sim:PRESET run (it streamed fresh images)
    streamed = str(meta["trained"]["data"]).startswith("sim:")
    assert (meta["trained"]["dataset_seed"] is None) == streamed


@pytest.mark.parametrize("item", SHIPPED, ids=[p["name"] for p in SHIPPED])
def test_shipped_model_reproduces_recorded_accuracy_on_a_fresh_test_set(item):
    recorded = item["metrics"]
    assert FRESH_SEED not in (item["trained"]["dataset_seed"], recorded["dataset_seed"])
    # TTA costs 8 forward passes an image: fewer images (a wider interval) keep the CPU time
    per_class = FRESH_PER_CLASS // 4 if recorded.get("tta") else FRESH_PER_CLASS
    images, labels = _fresh_test_set(recorded["preset"], per_class, FRESH_SEED)
    model, meta = load_checkpoint(f"pretrained:{item['name']}", device="cpu")
    probs = predict_proba(model, meta, images, batch_size=20, device="cpu",
                          tta=bool(recorded.get("tta")), progress=False)
    fresh = compute_metrics(labels, probs, n_bootstrap=2000, seed=0)
    lo, hi = fresh["ci95"]["accuracy"]
    if lo == hi:
        # every fresh image right (or every one wrong): resampling cannot vary the accuracy, so
        # the percentile interval is one point; the exact binomial interval still says how far
        # the true accuracy may lie from it with this many images
        correct = int(round(fresh["accuracy"] * len(labels)))
        ci = binomtest(correct, len(labels)).proportion_ci(confidence_level=0.95)
        lo, hi = ci.low, ci.high
    assert lo <= recorded["accuracy"] <= hi, (
        f"recorded accuracy {recorded['accuracy']:.4f} outside the fresh 95% interval "
        f"[{lo:.4f}, {hi:.4f}] (fresh accuracy {fresh['accuracy']:.4f}, n={len(labels)})")


# --- the packaging script, on a tiny model ----------------------------------------------------

DATA_SEED = 3


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, one_torch_thread):
    """A resnet_tiny run (1 epoch on a 32x32 model_a set) and its test-split evaluate report."""
    from darklens.evaluation import evaluate
    from darklens.sim import simulate_dataset
    from darklens.train import train

    root = tmp_path_factory.mktemp("tiny")
    data = simulate_dataset(root / "data", preset="model_a", n_train=12, n_val=4, n_test=6,
                            seed=DATA_SEED, device="cpu", overrides={"image_size": "32"},
                            progress=False)
    run = train(str(data), model="resnet_tiny", out=root / "run", recipe="fast", epochs=1,
                batch=12, device="cpu", seed=0)
    evaluate(run, data, split="test", out=root / "eval", device="cpu")
    return {"root": root, "data": Path(data), "run": Path(run),
            "report": root / "eval" / "report.json"}


def _package(script, tiny_run, out, **kw):
    args = dict(report=tiny_run["report"], name="tiny_a", command="darklens train DATA "
                "--model resnet_tiny --epochs 1", card="CPU (test)", dataset_seed=DATA_SEED,
                out=out, date="2026-11-27", description="one-epoch test model")
    return script.package(tiny_run["run"], **{**args, **kw})


def test_package_writes_loadable_weights_and_the_recorded_numbers(tiny_run, tmp_path,
                                                                  monkeypatch, capsys):
    script = load_benchmark("package_pretrained")
    weights_path, meta_path = _package(script, tiny_run, tmp_path / "pretrained")
    weights = weights_path.read_bytes()
    assert weights == (tiny_run["run"] / "best.safetensors").read_bytes()
    meta = json.loads(meta_path.read_text())
    assert meta["sha256"] == meta["weights_sha256"] == _sha256(weights)
    assert meta["model"] == "resnet_tiny" and meta["description"] == "one-epoch test model"
    assert meta["preprocessing"]["input_size"] == [32, 32]
    trained = meta["trained"]
    assert trained["command"].startswith("darklens train") and trained["card"] == "CPU (test)"
    assert trained["date"] == "2026-11-27" and trained["dataset_seed"] == DATA_SEED
    assert (trained["recipe"], trained["epochs"]) == ("fast", 1)
    assert (trained["n_train"], trained["n_val"]) == (36, 12)
    assert trained["darklens_version"]
    run_meta = json.loads((tiny_run["run"] / "best.json").read_text())
    assert trained["best_epoch_val"] == run_meta["metrics"] and "val_loss" in run_meta["metrics"]
    assert trained["best_epoch"] == run_meta["epoch"] == 1
    m = meta["metrics"]
    assert (m["split"], m["preset"], m["dataset_seed"]) == ("test", "model_a", DATA_SEED)
    assert m["n"] == 18 and m["n_per_class"] == {c: 6 for c in CLASSES}
    assert m["renderer"] == "eager on cpu"  # read from the test data's config.yaml
    assert not list((tmp_path / "pretrained").glob("*.tmp"))

    # pretrained:<name> loads it, and the recorded numbers are the model's own on the test
    # split, recomputed here with scikit-learn (independent of darklens' metrics code)
    monkeypatch.setattr(checkpoint, "_pretrained_dir", lambda: tmp_path / "pretrained")
    model, loaded = load_checkpoint("pretrained:tiny_a")
    assert loaded["metrics"] == m
    from darklens.data import open_dataset

    test = open_dataset(tiny_run["data"], progress=False).split("test")
    with torch.no_grad():
        probs = predict_proba(model, loaded, test.images, device="cpu", progress=False)
    y = np.asarray(test.labels)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, probs.argmax(1)), abs=1e-12)
    assert m["macro_f1"] == pytest.approx(f1_score(y, probs.argmax(1), average="macro"),
                                          abs=1e-9)
    for k, c in enumerate(CLASSES):
        assert m["auc"][c] == pytest.approx(roc_auc_score(y == k, probs[:, k]), abs=1e-9)
    assert m["auc_macro"] == pytest.approx(
        np.mean([roc_auc_score(y == k, probs[:, k]) for k in range(3)]), abs=1e-9)
    lo, hi = m["ci95"]["accuracy"]
    assert lo <= m["accuracy"] <= hi

    # darklens models lists it with its recorded test accuracy, interval and macro AUC
    assert main(["models", "tiny_a"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("pretrained:tiny_a "))
    assert "resnet_tiny" in line
    assert f"{m['accuracy']:.4f} [{lo:.4f}, {hi:.4f}]" in line
    assert f"{m['auc_macro']:.4f}" in line and "model_a test seed 3" in line
    assert "one-epoch test model" in out


def test_a_float16_copy_is_half_the_bytes_predicts_as_the_original_and_packages(tiny_run,
                                                                               tmp_path):
    from darklens.evaluation import evaluate

    half = load_benchmark("half_checkpoint")
    out = half.half_copy(tiny_run["run"], tmp_path / "run_fp16")
    original = (tiny_run["run"] / "best.safetensors").stat().st_size
    assert (out / "best.safetensors").stat().st_size < 0.6 * original
    from safetensors.torch import load_file

    stored, source = (load_file(str(f / "best.safetensors")) for f in (out, tiny_run["run"]))
    for key, value in source.items():  # floats halved, integer buffers kept
        assert stored[key].dtype == (torch.float16 if value.is_floating_point() else value.dtype)
    assert (out / "config.yaml").read_bytes() == (tiny_run["run"] / "config.yaml").read_bytes()
    assert (out / "train_sha256.txt").read_bytes() == \
        (tiny_run["run"] / "train_sha256.txt").read_bytes()  # evaluate's guard travels along
    model16, meta16 = load_checkpoint(out)
    assert meta16["weights_sha256"] == _sha256((out / "best.safetensors").read_bytes())
    assert meta16["weights_dtype"] == "float16"
    assert next(model16.parameters()).dtype == torch.float32  # inference stays float32
    model32, meta32 = load_checkpoint(tiny_run["run"])
    assert meta16["converted_from"]["weights_sha256"] == meta32["weights_sha256"]
    images = np.random.default_rng(0).random((8, 32, 32), dtype=np.float32)
    p16, p32 = (predict_proba(m, meta32, images, device="cpu", progress=False)
                for m in (model16, model32))
    assert np.abs(p16 - p32).max() < 5e-3 and not np.array_equal(p16, p32)
    with pytest.raises(DarklensError, match="already exists"):
        half.half_copy(tiny_run["run"], out)
    with pytest.raises(DarklensError, match="best.safetensors: missing"):
        half.half_copy(tmp_path, tmp_path / "none")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers
    # the copy is scored again, then packaged like any run
    evaluate(out, tiny_run["data"], split="test", out=tmp_path / "eval16", device="cpu")
    script = load_benchmark("package_pretrained")
    weights, _ = _package(script, {**tiny_run, "run": out,
                                   "report": tmp_path / "eval16" / "report.json"},
                          tmp_path / "pretrained")
    assert weights.read_bytes() == (out / "best.safetensors").read_bytes()


def test_package_of_a_sim_run_records_no_training_dataset_seed(tiny_run, tmp_path):
    """A sim:PRESET run streamed its training images: no training set seed is recorded, and
    the test seed is read from the test data (not taken from --dataset-seed)."""
    from darklens.evaluation import evaluate
    from darklens.train import train

    run = train("sim:model_a", model="resnet_tiny", out=tmp_path / "run", recipe="fast",
                epochs=1, batch=6, device="cpu", seed=0,
                overrides={"sim_set": "[image_size=32]", "sim_steps_per_epoch": "1",
                           "sim_val_per_class": "2", "bn_recalib_batches": "0"})
    evaluate(run, tiny_run["data"], split="test", out=tmp_path / "eval", device="cpu")
    script = load_benchmark("package_pretrained")
    _, meta_path = script.package(run, report=tmp_path / "eval" / "report.json", name="sim_a",
                                  command="darklens train sim:model_a ...", card="CPU (test)",
                                  dataset_seed=DATA_SEED + 1, out=tmp_path / "pretrained",
                                  date="2026-12-02")
    meta = json.loads(meta_path.read_text())
    assert meta["trained"]["data"] == "sim:model_a" and meta["trained"]["dataset_seed"] is None
    assert (meta["metrics"]["preset"], meta["metrics"]["dataset_seed"]) == ("model_a", DATA_SEED)


def test_package_refuses_large_weights_and_foreign_reports(tiny_run, tmp_path, monkeypatch):
    script = load_benchmark("package_pretrained")
    out = tmp_path / "pretrained"
    size = (tiny_run["run"] / "best.safetensors").stat().st_size
    monkeypatch.setattr(script, "MAX_WEIGHTS_BYTES", size - 1)
    with pytest.raises(DarklensError, match="exceed"):
        _package(script, tiny_run, out)
    assert not out.exists()
    monkeypatch.setattr(script, "MAX_WEIGHTS_BYTES", size)  # at the limit: accepted
    _package(script, tiny_run, out, name="at_limit")

    report = json.loads(tiny_run["report"].read_text())
    bad = {
        "other architecture": {**report, "model_name": "densenet_cbam"},
        "other run": {**report, "model": "runs/other/best.safetensors"},
        "validation split": {**report, "split": "val"},
        "other weights": {**report, "weights_sha256": "0" * 64},
    }
    assert report["weights_sha256"]  # evaluate names the weights it scored
    for why, content in bad.items():
        path = tmp_path / f"{why}.json"
        path.write_text(json.dumps(content))
        with pytest.raises(DarklensError) as err:
            _package(script, tiny_run, out, report=path, name="refused")
        assert "\n" not in str(err.value), why
        assert not (out / "refused.json").exists(), why
    with pytest.raises(DarklensError, match="seed"):
        _package(script, tiny_run, out, dataset_seed=DATA_SEED + 1, name="refused")


def test_package_script_command_line(tiny_run, tmp_path, capsys):
    script = load_benchmark("package_pretrained")
    out = tmp_path / "pretrained"
    argv = [str(tiny_run["run"]), "--report", str(tiny_run["report"]), "--name", "cli_a",
            "--command", "darklens train ...", "--card", "CPU", "--dataset-seed", "3",
            "--out", str(out)]
    assert script.main(argv) == 0
    assert (out / "cli_a.json").is_file() and (out / "cli_a.safetensors").is_file()
    meta = json.loads((out / "cli_a.json").read_text())
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row.startswith("| `pretrained:cli_a` | `resnet_tiny` | model_a test seed 3, 6+6+6 |")
    assert f"{meta['metrics']['accuracy']:.4f} [" in row
    assert row.endswith("| `darklens train ...` |")
    assert script.main(argv[:-1] + [str(out), "--date", "27/11/2026"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "YYYY-MM-DD" in err


def test_listing_keeps_plain_metrics_of_unpackaged_checkpoints():
    from darklens.models.listing import format_pretrained

    table = format_pretrained([{"name": "old", "model": "resnet_tiny",
                                "metrics": {"val_auc_macro": 0.91234}, "description": ""}])
    assert "pretrained:old" in table and "val_auc_macro=0.9123" in table


def test_resources_folder_is_the_package_folder():
    # pretrained:<name> reads the installed package's folder, where the wheel puts the files
    folder = checkpoint._pretrained_dir()
    with importlib.resources.as_file(folder) as path:
        assert Path(path).name == "pretrained" and Path(path).parent.name == "darklens"
