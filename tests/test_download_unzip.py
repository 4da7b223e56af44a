"""darklens.data.unzip on its own: the layout it builds, the archives it refuses.

The zip-slip and corrupt-archive cases through ``darklens download`` are in test_download.py.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from darklens.data import download, unzip
from darklens.errors import DarklensError


def write_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_download_reexports_the_extraction_api():
    assert download.unpack is unzip.unpack and download.OFFLINE_HINT == unzip.OFFLINE_HINT


def test_two_split_archives_lose_wrappers_and_junk(tmp_path):
    # model-i style: one archive per split, each wrapped in its own folder (and a split folder)
    train = write_zip(tmp_path / "train.zip", {
        "Model_I/train/no/a.npy": b"A", "Model_I/train/vort/b.npy": b"B",
        "__MACOSX/Model_I/._a.npy": b"junk", "Model_I/train/.DS_Store": b"junk"})
    test = write_zip(tmp_path / "test.zip", {"Model_I_test/no/c.npy": b"C"})
    out = tmp_path / "out"
    n = unzip.unpack([(train, "train", False), (test, "test", False)], out)
    assert n == 3
    assert tree(out) == {"train/no/a.npy": b"A", "train/vort/b.npy": b"B", "test/no/c.npy": b"C"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "test.zip", "train.zip"]


def test_existing_entries_are_replaced_others_kept(tmp_path):
    out = tmp_path / "out"
    (out / "train" / "old").mkdir(parents=True)
    (out / "train" / "old" / "stale.npy").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    archive = write_zip(tmp_path / "a.zip", {"train/no/a.npy": b"A"})
    assert unzip.unpack([(archive, "", False)], out) == 1
    assert tree(out) == {"notes.txt": b"mine", "train/no/a.npy": b"A"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "out"]  # no staging left


def test_same_entry_from_two_archives_is_refused(tmp_path):
    a = write_zip(tmp_path / "a.zip", {"train/no/a.npy": b"A"})
    b = write_zip(tmp_path / "b.zip", {"train/no/b.npy": b"B"})
    with pytest.raises(DarklensError, match="two archives both contain it"):
        unzip.unpack([(a, "", False), (b, "", False)], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_web_page_in_cache_is_removed_with_offline_hint(tmp_path):
    page = tmp_path / "cached.zip"
    page.write_bytes(b"<!DOCTYPE html><html>quota exceeded</html>")
    with pytest.raises(DarklensError) as e:
        unzip.unpack([(page, "", True)], tmp_path / "out")
    assert "web page" in str(e.value) and "darklens simulate" in str(e.value)
    assert not page.exists()  # our cache file: deleted so the next run downloads afresh


@pytest.mark.parametrize("error, text", [
    (ValueError("a\n  b   c"), "a b c"),
    (ValueError(""), "ValueError"),
    (ValueError("x" * 500), "x" * 297 + "..."),
])
def test_one_line(error, text):
    assert unzip.one_line(error) == text
