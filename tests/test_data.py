"""Readers, layouts, the packed cache and ``darklens inspect`` on tiny hand-made fixtures."""

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from darklens.cli import main
from darklens.data import iter_image_inputs, open_dataset, read_image
from darklens.data.inspect import inspect_dataset
from darklens.errors import DarklensError

RNG = np.random.default_rng(0)


def img(h=8, w=8):
    return RNG.random((h, w)).astype(np.float32)


def write_split_layout(root: Path, per_class=2, splits=("train", "val"),
                       names=("no", "sphere", "vort")):
    for split in splits:
        for name in names:
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per_class):
                np.save(d / f"{i + 1}.npy", img()[None])
    return root


def run_json(capsys, *args):
    code = main(["inspect", *map(str, args), "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


# --- readers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(8, 8), (1, 8, 8), (8, 8, 1), (64,)])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_read_image_shapes_and_dtypes(tmp_path, shape, dtype):
    base = RNG.random(64).reshape(8, 8)
    np.save(tmp_path / "a.npy", base.reshape(shape).astype(dtype))
    image, meta = read_image(tmp_path / "a.npy")
    assert image.shape == (8, 8) and image.dtype == np.float32
    np.testing.assert_allclose(image, base.astype(dtype).astype(np.float32))
    assert meta["source_dtype"] == np.dtype(dtype).name


def test_read_flat_with_label_and_uint8(tmp_path):
    base = RNG.random(16)
    np.save(tmp_path / "flat.npy", np.concatenate([base, [2.0]]))
    image, meta = read_image(tmp_path / "flat.npy")
    np.testing.assert_allclose(image, base.reshape(4, 4).astype(np.float32))
    assert meta["embedded_label"] == 2.0
    np.save(tmp_path / "u8.npy", np.array([[0, 255], [51, 102]], dtype=np.uint8))
    image, _ = read_image(tmp_path / "u8.npy")
    np.testing.assert_allclose(image, [[0, 1], [0.2, 0.4]], rtol=1e-6)


def test_read_rejects_bad_shapes(tmp_path):
    np.save(tmp_path / "odd.npy", np.zeros(15))
    with pytest.raises(DarklensError, match="odd.npy: flat array of 15"):
        read_image(tmp_path / "odd.npy")
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(DarklensError, match="text.npy: not a .npy file"):
        read_image(tmp_path / "text.npy")
    np.save(tmp_path / "rgb.npy", np.zeros((3, 8, 8)))
    with pytest.raises(DarklensError, match="unsupported array shape"):
        read_image(tmp_path / "rgb.npy")


class _Evil:
    """Unpickling this touches a marker file: proof that code ran."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _save_object_array(path: Path, items):
    arr = np.empty(len(items), dtype=object)
    for i, x in enumerate(items):
        arr[i] = x
    np.save(path, arr, allow_pickle=True)


def test_pickle_never_runs_without_flag(tmp_path):
    marker = tmp_path / "pwned"
    _Evil.marker = str(marker)
    _save_object_array(tmp_path / "evil.npy", [_Evil(), 1.0])
    with pytest.raises(DarklensError, match=r"evil.npy: .*pickled.*--allow-pickle"):
        read_image(tmp_path / "evil.npy")
    assert not marker.exists()
    # and through a whole dataset + inspect
    d = tmp_path / "ds" / "axion"
    d.mkdir(parents=True)
    (tmp_path / "evil.npy").rename(d / "1.npy")
    report = inspect_dataset(tmp_path / "ds")
    assert [p["kind"] for p in report["problems"]] == ["pickled"]
    assert not marker.exists()


def test_model_i_axion_pickle_with_flag(tmp_path):
    image = img()
    _save_object_array(tmp_path / "ax.npy", [image, 1.5e-23])
    out, meta = read_image(tmp_path / "ax.npy", allow_pickle=True)
    np.testing.assert_array_equal(out, image)
    assert meta["axion_mass"] == 1.5e-23


def test_model_ii_object_rows_with_flag(tmp_path):
    rows = [np.arange(4.0) + i for i in range(4)]
    _save_object_array(tmp_path / "rows.npy", rows)
    out, _ = read_image(tmp_path / "rows.npy", allow_pickle=True)
    np.testing.assert_array_equal(out, np.stack(rows).astype(np.float32))


# --- layouts ---------------------------------------------------------------------------------

def test_split_layout_counts_and_paths(tmp_path, capsys):
    write_split_layout(tmp_path / "d", per_class=3)
    code, rep = run_json(capsys, tmp_path / "d")
    assert code == 0, rep["problems"]
    assert rep["splits"] == {"train": {"no": 3, "sphere": 3, "vort": 3},
                             "val": {"no": 3, "sphere": 3, "vort": 3}}
    assert rep["image_shape"] == [8, 8]
    ds = open_dataset(tmp_path / "d")
    val = ds.split("val")
    assert val.paths[:3] == ["val/no/1.npy", "val/no/2.npy", "val/no/3.npy"]
    assert list(val.labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    np.testing.assert_array_equal(val.images[4], np.load(tmp_path / "d/val/sphere/2.npy")[0])


def test_model_folder_aliases_and_wrapper_zip(tmp_path, capsys):
    root = tmp_path / "wrap" / "model_ii"
    for name, n in (("no_sub", 2), ("cdm", 3), ("axion", 1)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            np.save(root / name / f"{i}.npy", img().reshape(-1))  # Model II flat files
    code, rep = run_json(capsys, tmp_path / "wrap")
    assert code == 0
    assert rep["splits"] == {"all": {"no": 2, "sphere": 3, "vort": 1}}
    # the same as a zip, read in place
    z = tmp_path / "ds.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in sorted(root.rglob("*.npy")):
            zf.write(f, f.relative_to(tmp_path / "wrap"))
    code, rep = run_json(capsys, z)
    assert code == 0 and rep["splits"] == {"all": {"no": 2, "sphere": 3, "vort": 1}}
    ds = open_dataset(z)
    assert ds.split("all").paths[0] == "model_ii/no_sub/0.npy"


def test_common_test_zip_layout(tmp_path):
    src = write_split_layout(tmp_path / "dataset", per_class=2)
    z = tmp_path / "dataset.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in sorted(src.rglob("*.npy")):
            zf.write(f, f.relative_to(tmp_path))
    ds = open_dataset(z)
    assert ds.splits == ["train", "val"]
    assert len(ds.split("train")) == 6
    assert ds.split("train").paths[0] == "dataset/train/no/1.npy"
    with pytest.raises(DarklensError, match="no split 'test'"):
        ds.split("test")


def test_unknown_class_folder_is_named(tmp_path, capsys):
    write_split_layout(tmp_path / "d", per_class=1)
    (tmp_path / "d/train/lens").mkdir()
    np.save(tmp_path / "d/train/lens/1.npy", img())
    code, rep = run_json(capsys, tmp_path / "d")
    assert code == 1
    assert rep["problems"][0]["kind"] == "unknown_class"
    assert rep["problems"][0]["path"] == "train/lens"
    with pytest.raises(DarklensError, match="train/lens: unknown class folder 'lens'"):
        open_dataset(tmp_path / "d")


@pytest.mark.parametrize("kind", ["corrupt", "nan", "constant", "size", "empty", "duplicate",
                                  "leakage"])
def test_each_problem_is_reported_with_its_file(tmp_path, capsys, kind):
    root = write_split_layout(tmp_path / "d", per_class=2)
    expect_path = {
        "corrupt": "train/no/1.npy", "nan": "train/sphere/2.npy", "constant": "val/vort/1.npy",
        "size": "val/no/2.npy", "empty": "val/sphere", "duplicate": "train/vort/2.npy",
        "leakage": "val/sphere/1.npy",
    }[kind]
    target = root / expect_path
    if kind == "corrupt":
        target.write_bytes(b"\x93NUMPY garbage")
    elif kind == "nan":
        a = img()
        a[3, 3] = np.nan
        np.save(target, a[None])
    elif kind == "constant":
        np.save(target, np.full((1, 8, 8), 0.25, np.float32))
    elif kind == "size":
        np.save(target, img(9, 9)[None])
    elif kind == "empty":
        for f in target.iterdir():
            f.unlink()
    elif kind == "duplicate":
        np.save(target, np.load(root / "train/vort/1.npy"))
    elif kind == "leakage":
        np.save(target, np.load(root / "train/no/2.npy"))
    code, rep = run_json(capsys, root)
    kinds = {"corrupt": "unreadable", "nan": "nan_inf", "size": "size_mismatch",
             "empty": "empty_class"}.get(kind, kind)
    assert code == 1
    assert [(p["kind"], p["path"]) for p in rep["problems"]] == [(kinds, expect_path)]


def test_text_report_and_clean_exit(tmp_path, capsys):
    write_split_layout(tmp_path / "d", per_class=1)
    assert main(["inspect", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "problems: none" in out and "train" in out


@pytest.mark.parametrize("make", ["missing", "empty", "badzip"])
def test_bad_roots_are_one_line_errors(tmp_path, capsys, make):
    target = tmp_path / "x"
    if make == "empty":
        target.mkdir()
    elif make == "badzip":
        target = tmp_path / "x.zip"
        target.write_bytes(b"PK\x03\x04 not really a zip")
    code = main(["inspect", str(target)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("darklens: error: ") and err.count("\n") == 1
    assert str(target) in err


# --- the packed cache ------------------------------------------------------------------------

def test_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    root = write_split_layout(tmp_path / "d", per_class=2)
    first = open_dataset(root)
    calls = []
    import darklens.data.cache as cache

    real = cache.read_image
    monkeypatch.setattr(cache, "read_image", lambda *a, **k: calls.append(a) or real(*a, **k))
    second = open_dataset(root)
    assert calls == []  # no file opened on the second read
    np.testing.assert_array_equal(first.split("val").images, second.split("val").images)
    # a changed file invalidates the cache
    target = root / "val/sphere/1.npy"
    new = img()[None]
    np.save(target, new)
    os.utime(target, ns=(1, 1))
    third = open_dataset(root)
    assert calls, "changed file must trigger a re-read"
    np.testing.assert_array_equal(third.split("val").images[2], new[0])


def test_concurrent_first_reads_build_the_cache_once(tmp_path):
    """DDP ranks open a new dataset at the same time: one builds, the others wait and map it
    (two builders used to swap folders under each other: "could not be read back")."""
    import threading
    import time

    import darklens.data.cache as cache

    pytest.importorskip("fcntl")

    root = write_split_layout(tmp_path / "d", per_class=2)
    builds, results, errors = [], [], []
    real_build = cache._build

    def slow_build(*args, **kwargs):
        builds.append(1)
        time.sleep(0.5)  # both readers are past their first look before this one finishes
        return real_build(*args, **kwargs)

    def read():
        try:
            results.append(open_dataset(root).split("val").images.copy())
        except Exception as e:  # noqa: BLE001 (reported by the assertion below)
            errors.append(e)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cache, "_build", slow_build)
        threads = [threading.Thread(target=read) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    assert errors == [] and len(results) == 2
    assert len(builds) == 1
    np.testing.assert_array_equal(results[0], results[1])


def test_sha256_is_of_pixels(tmp_path):
    import hashlib

    root = write_split_layout(tmp_path / "d", per_class=1)
    s = open_dataset(root).split("train")
    pixels = np.load(root / "train/no/1.npy")[0].astype(np.float32)
    assert s.sha256[0] == hashlib.sha256(pixels.tobytes()).hexdigest()


# --- predict inputs --------------------------------------------------------------------------

def test_iter_image_inputs_mixes_good_and_bad(tmp_path):
    root = write_split_layout(tmp_path / "d", per_class=1, splits=("val",))
    (root / "val/no/2.npy").write_bytes(b"not numpy")
    single = tmp_path / "one.npy"
    np.save(single, img())
    got = list(iter_image_inputs([root, single]))
    paths = [p for p, _ in got]
    assert paths == [str(root / "val/no/1.npy"), str(root / "val/no/2.npy"),
                     str(root / "val/sphere/1.npy"), str(root / "val/vort/1.npy"), str(single)]
    bad = [p for p, x in got if isinstance(x, DarklensError)]
    assert bad == [str(root / "val/no/2.npy")]
