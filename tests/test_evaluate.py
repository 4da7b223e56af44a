"""darklens evaluate: report files, every number recomputed independently, TTA symmetry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

from darklens import CLASSES
from darklens.cli import main
from darklens.errors import DarklensError

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def lens_like(rng: np.random.Generator, label: int, size: int = SIZE) -> np.ndarray:
    """A toy image per class: a blob; sphere adds bright dots, vort a bright line. In [0, 1]."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    image = np.exp(-(xx**2 + yy**2) / (2 * (size / 6) ** 2)) + 0.15 * rng.random((size, size))
    if label == 1:
        for _ in range(4):
            i, j = rng.integers(4, size - 4, 2)
            image[i - 1: i + 2, j - 1: j + 2] += 1.0
    elif label == 2:
        angle = rng.uniform(0, np.pi)
        t = np.linspace(-size / 3, size / 3, 4 * size)
        cols = np.clip(np.round(size / 2 + t * np.cos(angle)).astype(int), 0, size - 1)
        rows = np.clip(np.round(size / 2 + t * np.sin(angle)).astype(int), 0, size - 1)
        image[rows, cols] += 1.0
    image = (image - image.min()) / (image.max() - image.min())
    return image.astype(np.float32)


def write_dataset(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """Common Test layout: root/<split>/<class>/<n>.npy, each (1, SIZE, SIZE)."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                np.save(folder / f"{i}.npy", lens_like(rng, label)[None])
    return root


def tiny_checkpoint(run: Path, seed: int = 0) -> Path:
    """A random densenet_cbam_tiny whose BatchNorm statistics are fitted to toy images.

    Training is too slow for the default test run on 2 shared cores; fitting only the BatchNorm
    running statistics (forward passes, no gradients) is enough to make the scores vary from
    image to image, so ties do not hide mistakes in the AUCs.
    """
    from darklens.checkpoint import save_checkpoint
    from darklens.models import create_model

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 100)
    labels = np.repeat(np.arange(3), 16)
    images = np.stack([lens_like(rng, int(y)) for y in labels])[:, None] - 0.5
    model = create_model("densenet_cbam_tiny")
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the passes below
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(images))
    save_checkpoint(run / "best", model.eval(), model_name="densenet_cbam_tiny", model_kwargs={},
                    preprocessing={"subtract": 0.5, "input_size": [SIZE, SIZE]}, config={},
                    metrics={}, seed=seed)
    return run


def read_csv(path: Path) -> tuple[list[str], np.ndarray, list[str], list[str]]:
    """(paths, probs (N, 3), pred names, header) of a predictions CSV, read with the csv module."""
    import csv

    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    cols = {name: i for i, name in enumerate(header)}
    probs = np.array([[float(r[cols[f"p_{c}"]]) for c in CLASSES] for r in body])
    return [r[cols["path"]] for r in body], probs, [r[cols["pred"]] for r in body], header


def reference_ece(y: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Plain-loop top-label ECE, bins (lo, hi], written independently of the library."""
    conf, pred = probs.max(1), probs.argmax(1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs((pred[inside] == y[inside]).mean() - conf[inside].mean())
    return total


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    data = write_dataset(tmp / "data", {"train": 3, "val": 12}, seed=1)
    run = tiny_checkpoint(tmp / "run")
    return tmp, data, run


@pytest.fixture(scope="module")
def report_dir(setup):
    tmp, data, run = setup
    out = tmp / "report"
    assert main(["evaluate", str(run), str(data), "--split", "val", "--out", str(out),
                 "--device", "cpu"]) == 0
    return out


def test_report_files_exist_and_are_not_empty(report_dir):
    for name in ("report.json", "report.md", "roc.png", "confusion.png", "calibration.png",
                 "examples.png", "predictions.csv"):
        assert (report_dir / name).stat().st_size > 0, name
    for name in ("roc.png", "confusion.png", "calibration.png", "examples.png"):
        assert (report_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in (report_dir / "report.md").read_text()
    report = json.loads((report_dir / "report.json").read_text())
    assert set(report) >= {"n", "accuracy", "macro_f1", "auc", "confusion_matrix", "ece", "ci95",
                           "model", "data"}
    assert set(report["auc"]) == {"no", "sphere", "vort", "micro", "macro"}
    assert set(report["ci95"]) == {"accuracy", "macro_auc"}
    assert report["n"] == 36 and report["split"] == "val"


def test_report_equals_recomputation_from_predict(setup, report_dir, tmp_path):
    """evaluate and predict agree: report.json recomputed with sklearn from predict's CSV."""
    tmp, data, run = setup
    csv_path = tmp_path / "preds.csv"
    assert main(["predict", str(run), str(data / "val"), "--out", str(csv_path),
                 "--device", "cpu"]) == 0
    paths, probs, _, _ = read_csv(csv_path)
    y = np.array([CLASSES.index(Path(p).parent.name) for p in paths])
    pred = probs.argmax(1)
    report = json.loads((report_dir / "report.json").read_text())
    assert report["n"] == len(y) == 36
    assert len(np.unique(probs[:, 1])) > 30  # scores are not all tied: the AUCs mean something
    assert report["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert report["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    assert report["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    per_class = [roc_auc_score(y == k, probs[:, k]) for k in range(3)]
    for k, name in enumerate(CLASSES):
        assert report["auc"][name] == pytest.approx(per_class[k], abs=1e-6), name
    assert report["auc"]["macro"] == pytest.approx(np.mean(per_class), abs=1e-6)
    assert report["auc"]["micro"] == pytest.approx(
        roc_auc_score(np.eye(3)[y], probs, average="micro"), abs=1e-6)
    assert report["ece"] == pytest.approx(reference_ece(y, probs), abs=1e-6)
    lo, hi = report["ci95"]["accuracy"]
    assert lo <= report["accuracy"] <= hi
    lo, hi = report["ci95"]["macro_auc"]
    assert lo <= report["auc"]["macro"] <= hi


def test_evaluate_split_all_and_missing_split(setup, tmp_path, capsys):
    tmp, data, run = setup
    from darklens.data import open_dataset
    from darklens.evaluation.report import _choose_split

    part = _choose_split(open_dataset(data, progress=False), data, "all")
    assert len(part) == 3 * (3 + 12) and sorted(set(part.labels.tolist())) == [0, 1, 2]
    # the default split is test; this data has none: one line naming the splits there are
    assert main(["evaluate", str(run), str(data), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no 'test' split" in err and "train, val" in err and "--split" in err
    assert not (tmp_path / "t" / "report.json").exists()


def test_evaluate_bad_model_is_one_line(setup, tmp_path, capsys):
    _, data, _ = setup
    assert main(["evaluate", str(tmp_path / "nope"), str(data), "--split", "val",
                 "--out", str(tmp_path / "r")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_tta_is_invariant_under_d4(setup):
    """Averaging all 8 D4 views makes the output invariant to rotating/flipping the input."""
    from darklens.checkpoint import load_checkpoint
    from darklens.evaluation import predict_proba

    _, _, run = setup
    model, meta = load_checkpoint(str(run))
    rng = np.random.default_rng(5)
    images = np.stack([lens_like(rng, k % 3) for k in range(3)])
    transformed = {  # a rotation and a reflection generate D4
        "rot90": np.rot90(images, 1, axes=(1, 2)),
        "flip": images[:, :, ::-1],
    }
    base = predict_proba(model, meta, images, tta=True, progress=False)
    plain = predict_proba(model, meta, images, tta=False, progress=False)
    assert np.allclose(base.sum(1), 1.0)
    for name, other in transformed.items():
        tta = predict_proba(model, meta, np.ascontiguousarray(other), tta=True, progress=False)
        assert np.abs(tta - base).max() < 1e-5, name
    # without TTA the same transforms do change the output (the check above can fail)
    moved = predict_proba(model, meta, np.ascontiguousarray(transformed["flip"]), tta=False,
                          progress=False)
    assert np.abs(moved - plain).max() > 1e-4


def test_tta_equals_mean_over_views(setup):
    from darklens.checkpoint import load_checkpoint, preprocess
    from darklens.evaluation import predict_proba

    _, _, run = setup
    model, meta = load_checkpoint(str(run))
    images = np.stack([lens_like(np.random.default_rng(k), k % 3) for k in range(4)])
    views = []
    for img in images:
        group = [np.rot90(img, k) for k in range(4)] + [np.rot90(img.T, k) for k in range(4)]
        views.append(group)
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(np.array(views).reshape(-1, SIZE, SIZE)))
        p = torch.softmax(model(preprocess(x, meta)), 1).numpy().reshape(4, 8, 3).mean(1)
    got = predict_proba(model, meta, images, tta=True, progress=False)
    assert np.abs(got - p).max() < 1e-5


def test_unknown_device_is_user_error():
    from darklens.evaluation.inference import resolve_device

    if torch.cuda.is_available():
        pytest.skip("a CUDA device exists here")
    with pytest.raises(DarklensError, match="no CUDA device"):
        resolve_device("cuda")


@pytest.mark.gpu
def test_cuda_matches_cpu(setup, tmp_path):
    """evaluate and predict on the GPU give the CPU's numbers (fp32, cuDNN autotuned)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from darklens.evaluation import evaluate, predict

    tmp, data, run = setup
    reports = {dev: evaluate(str(run), str(data), split="val", out=tmp_path / dev, tta=True,
                             allow_pickle=False, device=dev) for dev in ("cpu", "cuda")}
    for key in ("no", "sphere", "vort", "micro", "macro"):
        assert reports["cuda"]["auc"][key] == pytest.approx(reports["cpu"]["auc"][key], abs=1e-3)
    probs = {}
    for dev in ("cpu", "cuda"):
        assert predict(str(run), [str(data / "val")], out=tmp_path / f"{dev}.csv", tta=False,
                       device=dev) == 0
        probs[dev] = read_csv(tmp_path / f"{dev}.csv")[1]
    assert np.abs(probs["cuda"] - probs["cpu"]).max() < 1e-4


def test_ieee_fp32_turns_tf32_off_and_restores_it():
    from darklens.evaluation.inference import ieee_fp32

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        with ieee_fp32(torch.device("cuda")):  # only flips flags: runs without a GPU
            assert not torch.backends.cudnn.allow_tf32
            assert not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        with ieee_fp32(torch.device("cpu")):
            assert torch.backends.cudnn.allow_tf32  # CPU: nothing to change
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_a_run_is_never_scored_on_its_own_training_images(tmp_path, capsys):
    """The notebook's "validation" scored training images. A run records its training images'
    content hashes; evaluate refuses any of them, under any split name or file name."""
    import shutil

    from train_fixtures import write_dataset as write_train_dataset

    from darklens.train import train

    data = write_train_dataset(tmp_path / "d", n_train=12, n_val=4)
    run = train(str(data), out=tmp_path / "run", model="resnet_tiny", recipe="fast", epochs=1,
                batch=16, device="cpu", resume=False, seed=0, allow_pickle=False,
                overrides={"bn_recalib_batches": "1"})
    hashes = (run / "train_sha256.txt").read_text().split()
    assert len(hashes) == 36 and len(set(hashes)) == 36
    capsys.readouterr()  # training's progress bars

    # only train/ and val/: --split all holds the training images
    assert main(["evaluate", str(run), str(data), "--split", "all", "--out",
                 str(tmp_path / "all"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "36 of the 48 images of split 'all' are images the model trained on" in err
    assert not (tmp_path / "all").exists()
    # the missing-split message no longer sends the user to --split all
    assert main(["evaluate", str(run), str(data), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "--split val" in err and "all" not in err.split("available")[1].split(";")[1]

    # one training image copied into test/ under another name: refused by content
    for name in CLASSES:
        (data / "test" / name).mkdir(parents=True)
        shutil.copy(data / "val" / name / "0.npy", data / "test" / name / "a.npy")
    shutil.copy(data / "train" / "sphere" / "3.npy", data / "test" / "no" / "copy.npy")
    assert main(["evaluate", str(run), str(data), "--out", str(tmp_path / "t"),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "1 of the 4 images of split 'test'" in err and "test/no/copy.npy" in err
    (data / "test" / "no" / "copy.npy").unlink()
    assert main(["evaluate", str(run), str(data), "--out", str(tmp_path / "t"),
                 "--device", "cpu"]) == 0

    # a model without that record (e.g. pretrained) is scored, with a warning about the dataset
    (run / "train_sha256.txt").unlink()
    shutil.copy(data / "train" / "sphere" / "3.npy", data / "test" / "no" / "copy.npy")
    with pytest.warns(UserWarning, match="1 images of split 'test' are also in its train split"):
        assert main(["evaluate", str(run), str(data), "--out", str(tmp_path / "t2"),
                     "--device", "cpu"]) == 0
    # and training on that dataset warns before the run starts
    with pytest.warns(UserWarning, match="1 test images are also training images"):
        train(str(data), out=tmp_path / "run2", model="resnet_tiny", recipe="fast", epochs=1,
              batch=16, device="cpu", resume=False, seed=0, allow_pickle=False,
              overrides={"bn_recalib_batches": "1"})


def test_evaluate_and_export_say_what_they_did(setup, tmp_path, capsys):
    tmp, data, run = setup
    assert main(["evaluate", str(run), str(data), "--split", "val", "--out",
                 str(tmp_path / "r"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert out.startswith(f"36 images of split val: accuracy {report['accuracy']:.4f}, macro "
                          f"AUC {report['auc']['macro']:.4f} [")
    assert out.endswith(f"-> {tmp_path / 'r' / 'report.md'}")


def test_unsplit_class_folders_point_to_split_all(tmp_path):
    from darklens.data import open_dataset
    from darklens.evaluation.report import _choose_split

    rng = np.random.default_rng(0)
    for name in CLASSES:
        (tmp_path / "held_out" / name).mkdir(parents=True)
        np.save(tmp_path / "held_out" / name / "0.npy", rng.random((1, 16, 16), dtype=np.float32))
    ds = open_dataset(tmp_path / "held_out", progress=False)
    with pytest.raises(DarklensError, match="no splits: --split all scores every image"):
        _choose_split(ds, tmp_path / "held_out", "test")
    assert len(_choose_split(ds, tmp_path / "held_out", "all")) == 3
