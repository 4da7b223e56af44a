"""darklens predict: CSV format, bad files (stop / --skip-bad), folders, zips, loose files."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_evaluate import SIZE, lens_like, read_csv, tiny_checkpoint, write_dataset

from darklens import CLASSES
from darklens.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("predict-run") / "run")


def reference_probs(run: Path, images: np.ndarray) -> np.ndarray:
    """Probabilities computed by hand: the checkpoint's recipe (x - 0.5) and a plain forward."""
    from safetensors.torch import load_file

    from darklens.models import create_model

    model = create_model("densenet_cbam_tiny")
    model.load_state_dict(load_file(str(run / "best.safetensors")))
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(images, np.float32)[:, None] - 0.5)
        return torch.softmax(model.eval()(x), 1).numpy()


def write_bad_files(folder: Path) -> dict[str, str]:
    """Three kinds of bad file; returns name -> a word the error message should contain."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "text.npy").write_text("not an array")
    good = folder / "truncated.npy"
    np.save(good, np.zeros((1, SIZE, SIZE), np.float32))
    good.write_bytes(good.read_bytes()[:200])  # header intact, pixels cut off
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = np.zeros((SIZE, SIZE)), 1e-23
    with open(folder / "pickled.npy", "wb") as f:
        np.save(f, arr, allow_pickle=True)
    nan = np.full((1, SIZE, SIZE), np.nan, np.float32)
    np.save(folder / "nan.npy", nan)
    # (numpy reads any file without the .npy magic as a pickle, so text.npy is refused as one)
    return {"text.npy": "", "truncated.npy": "readable", "pickled.npy": "pickle", "nan.npy": "NaN"}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A class-layout folder with good images plus bad files in the sphere folder."""
    root = write_dataset(tmp_path_factory.mktemp("mixed") / "data", {"val": 4}, seed=3)
    bad = write_bad_files(root / "val" / "sphere")
    return root, bad


def _good_images(root: Path) -> dict[str, np.ndarray]:
    return {str(p): np.load(p)[0] for p in sorted(root.rglob("*.npy"))
            if p.name[0].isdigit()}


def test_bad_file_stops_with_one_line(run, mixed, tmp_path, capsys):
    root, bad = mixed
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(root), "--out", str(out), "--device", "cpu"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("darklens")]
    assert len(err) == 1 and err[0].startswith("darklens: error: ")
    assert any(name in err[0] for name in bad)
    assert "--skip-bad" in err[0]
    assert not out.exists()


def test_skip_bad_lists_them_and_predicts_the_rest(run, mixed, tmp_path, capsys):
    root, bad = mixed
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(root), "--out", str(out), "--skip-bad",
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    for name, word in bad.items():
        line = next(line for line in err.splitlines() if name in line)
        assert word.lower() in line.lower(), line
    paths, probs, pred, header = read_csv(out)
    assert header == ["path", "p_no", "p_sphere", "p_vort", "pred"]
    good = _good_images(root)
    assert sorted(paths) == sorted(good) and len(paths) == 12
    expected = reference_probs(run, np.stack([good[p] for p in paths]))
    assert np.abs(probs - expected).max() < 1e-5
    assert pred == [CLASSES[k] for k in expected.argmax(1)]
    assert np.allclose(probs.sum(1), 1.0, atol=1e-6)


def test_relative_paths_keep_class_folder(run, mixed, tmp_path, monkeypatch):
    root, _ = mixed
    monkeypatch.chdir(root.parent)
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), "data/val", "--out", str(out), "--skip-bad",
                 "--device", "cpu"]) == 0
    paths, _, _, _ = read_csv(out)
    assert "data/val/sphere/0.npy" in paths and "data/val/vort/3.npy" in paths


def test_zip_loose_folder_and_single_files(run, tmp_path):
    rng = np.random.default_rng(7)
    images = [lens_like(rng, k % 3) for k in range(5)]
    loose = tmp_path / "loose" / "deep" / "er"  # no class folders: read file by file
    loose.mkdir(parents=True)
    for i, image in enumerate(images[:3]):
        np.save(loose / f"img{i}.npy", image)  # plain (H, W)
    single = tmp_path / "single.npy"
    np.save(single, images[3][None])
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        path = tmp_path / "z.npy"
        np.save(path, images[4][None])
        zf.write(path, "dataset/val/vort/0.npy")
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(tmp_path / "loose"), str(single), str(archive),
                 "--out", str(out), "--device", "cpu"]) == 0
    paths, probs, _, _ = read_csv(out)
    assert paths == [
        *(str(tmp_path / "loose" / "deep" / "er" / f"img{i}.npy") for i in range(3)),
        str(single), f"{archive}/dataset/val/vort/0.npy",
    ]
    assert np.abs(probs - reference_probs(run, np.stack(images))).max() < 1e-5


def test_tta_flag_changes_nothing_but_the_averaging(run, mixed, tmp_path):
    root, _ = mixed
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(root / "val" / "no"), "--out", str(out), "--tta",
                 "--device", "cpu"]) == 0
    paths, probs, _, _ = read_csv(out)
    images = np.stack([np.load(p)[0] for p in paths])
    views = [np.rot90(images, k, axes=(1, 2)) for k in range(4)]
    views += [np.rot90(images[:, :, ::-1], k, axes=(1, 2)) for k in range(4)]
    stacked = np.ascontiguousarray(np.concatenate(views))  # one forward for all 8 views
    expected = reference_probs(run, stacked).reshape(8, len(images), 3).mean(0)
    assert np.abs(probs - expected).max() < 1e-5


def test_missing_input_and_nothing_readable(run, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(tmp_path / "nope.npy"), "--out", str(out)]) == 2
    assert "nope.npy" in capsys.readouterr().err
    bad = tmp_path / "bad"
    write_bad_files(bad)
    assert main(["predict", str(run), str(bad), "--out", str(out), "--skip-bad"]) == 2
    assert "no readable" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not out.exists()


def test_pickle_needs_allow_pickle(run, tmp_path, capsys):
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = lens_like(np.random.default_rng(0), 2), 1e-23
    path = tmp_path / "axion.npy"
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=True)
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(path), "--out", str(out)]) == 2
    assert "pickle" in capsys.readouterr().err
    assert main(["predict", str(run), str(path), "--out", str(out), "--allow-pickle",
                 "--device", "cpu"]) == 0
    _, probs, _, _ = read_csv(out)
    assert np.abs(probs - reference_probs(run, arr[0][None])).max() < 1e-5
    assert os.path.getsize(out) > 0
