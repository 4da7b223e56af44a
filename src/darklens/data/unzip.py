"""Safe extraction of downloaded zip archives: zip-slip checks, staging, move into place.

Every member name of every archive is checked before anything is written (zip-slip: absolute
paths, drive letters, ``..`` components, symlinks and other special files are refused). Members
are unpacked into a hidden sibling folder of the destination and moved into it only when all
archives unpacked cleanly, so a failure leaves nothing half-extracted there. Top-level entries the
archive brings (e.g. ``train/``, ``val/``) replace same-named ones; the rest is kept (the caller
decides whether a non-empty destination is allowed: ``darklens download --force``).

    n_files = unpack([(Path("common-test.zip"), "", False)], Path("data/common-test"))
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path

from tqdm.auto import tqdm

from darklens.errors import DarklensError

#: what to do when no dataset can be fetched; also said when a "zip" turns out to be a web page
OFFLINE_HINT = (
    "offline alternative: darklens simulate DIR --preset model_a --train 1000 --val 250"
)
CHUNK_BYTES = 1 << 20

# Folder names that carry meaning for the readers: never strip them as a "wrapper" folder.
_SPLIT_NAMES = ("train", "val", "test")
_CLASS_NAMES = ("no", "no_sub", "sphere", "cdm", "subhalo", "vort", "axion", "vortex")
# Archive clutter from macOS Finder: not data, skipped on extraction.
_JUNK_NAMES = ("__MACOSX", ".DS_Store")


def one_line(e: BaseException, limit: int = 300) -> str:
    """The exception as one line, cut at ``limit`` characters (requests' messages run long)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unpack(archives: list[tuple[Path, str, bool]], out_dir: Path) -> int:
    """Check, unpack and move archives into ``out_dir``; nothing lands there on failure.

    Args:
        archives: (zip path, subdir inside ``out_dir``, path is a cache file we may delete).
        out_dir: destination folder (absolute); checked by the caller for emptiness.

    Returns:
        The number of files unpacked.

    Raises:
        DarklensError: an unsafe member (zip-slip), an unreadable or corrupt archive, no files,
            too little disk space, or two archives that bring the same entry.
    """
    checked = [(path, subdir, owned, _checked_members(path, owned)) for path, subdir, owned
               in archives]  # every archive is vetted before a single byte is written
    total = sum(info.file_size for *_, members in checked for info, _ in members)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out_dir.parent).free
    if total > free:
        raise DarklensError(f"{out_dir}: not enough disk space to unpack ({total} bytes needed, "
                            f"{free} free)")
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        root = staging / "root"
        n_files = 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                  desc="unpacking", disable=None) as bar:
            for i, (path, subdir, owned, members) in enumerate(checked):
                extracted = staging / f"archive{i}"
                n_files += _extract(path, owned, members, extracted, bar)
                content = _content_root(extracted, strip_splits=bool(subdir))
                _merge(content, root / subdir if subdir else root)
        if n_files == 0:
            raise DarklensError(f"{archives[0][0]}: the archive contains no files")
        _install(root, out_dir)
        return n_files
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _checked_members(path: Path, owned: bool) -> list[tuple[zipfile.ZipInfo, list[str]]]:
    """Every member with its path components; raise on any unsafe entry (zip-slip)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise _bad_archive(path, owned, e) from None
    members = []
    for info in infos:
        members.append((info, _safe_parts(path, info)))
    return members


def _safe_parts(path: Path, info: zipfile.ZipInfo) -> list[str]:
    name = info.filename
    unsafe = f"{path}: unsafe entry {name!r}"
    refusal = "refusing to extract anything (zip-slip)"
    norm = name.replace("\\", "/")  # a backslash is a separator on Windows: treat it as one
    if norm.startswith("/") or re.match(r"[A-Za-z]:", norm):
        raise DarklensError(f"{unsafe} is an absolute path; {refusal}")
    if "\x00" in name:
        raise DarklensError(f"{unsafe} contains a NUL byte; {refusal}")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DarklensError(f"{unsafe} climbs out of the folder (..); {refusal}")
    mode = info.external_attr >> 16  # unix st_mode, when the zip was made on unix
    if stat.S_ISLNK(mode):
        raise DarklensError(f"{unsafe} is a symbolic link; {refusal}")
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise DarklensError(f"{unsafe} is a special file (mode {mode:o}); {refusal}")
    return parts


def _bad_archive(path: Path, owned: bool, e: BaseException) -> DarklensError:
    """A one-line error for an unreadable archive; a broken cache file is removed."""
    web_page = False
    try:
        with open(path, "rb") as f:
            web_page = f.read(512).lstrip().lower().startswith((b"<!doctype html", b"<html"))
    except OSError:
        pass
    if owned:  # our own cache file: delete it so the next run downloads afresh
        path.unlink(missing_ok=True)
    if web_page:
        return DarklensError(f"{path}: got a web page instead of a zip archive (dead link or "
                             f"over quota); {OFFLINE_HINT}")
    again = "; it was removed from the cache, run the command again" if owned else ""
    return DarklensError(f"{path}: not a readable zip archive ({one_line(e)}){again}")


def _extract(path: Path, owned: bool, members, dest: Path, bar: tqdm) -> int:
    """Write checked members under ``dest`` (our own path joining, not ZipFile.extract)."""
    dest.mkdir()
    n_files = 0
    try:
        with zipfile.ZipFile(path) as zf:
            for info, parts in members:
                if not parts or parts[0] in _JUNK_NAMES or parts[-1] in _JUNK_NAMES:
                    continue
                target = dest.joinpath(*parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(CHUNK_BYTES):
                        dst.write(chunk)
                        bar.update(len(chunk))
                n_files += 1
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:  # CRC mismatch, truncated data
        raise _bad_archive(path, owned, e) from None
    except (NotImplementedError, RuntimeError) as e:  # deflate64, encryption
        raise DarklensError(f"{path}: {one_line(e)}; unpack it with another tool and give "
                            "darklens the folder") from None
    except OSError as e:
        raise DarklensError(f"{path}: cannot unpack ({one_line(e)})") from None
    return n_files


def _content_root(folder: Path, *, strip_splits: bool) -> Path:
    """Skip wrapper folders (``dataset/`` in the Common Test zip) down to the data itself.

    A lone folder named like a class (``no``, ``cdm``...) is data and stays; a lone split folder
    stays too, unless the archive already goes into a split subdir (``strip_splits``).
    """
    keep = _CLASS_NAMES if strip_splits else _CLASS_NAMES + _SPLIT_NAMES
    while True:
        entries = list(folder.iterdir())
        if len(entries) != 1 or not entries[0].is_dir() or entries[0].name.lower() in keep:
            return folder
        folder = entries[0]


def _merge(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest``, or its entries into ``dest`` when that exists already."""
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
        return
    for entry in src.iterdir():
        target = dest / entry.name
        if target.exists():
            raise DarklensError(f"{dest.name}/{entry.name}: two archives both contain it")
        os.replace(entry, target)


def _install(root: Path, out_dir: Path) -> None:
    """Move the unpacked tree into ``out_dir`` with renames only (same filesystem)."""
    if not out_dir.exists():
        os.replace(root, out_dir)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    replaced, installed = [], []
    try:
        for entry in sorted(root.iterdir()):
            target = out_dir / entry.name
            if target.exists() or target.is_symlink():
                os.replace(target, trash / entry.name)  # --force: set aside, deleted on success
                replaced.append(entry.name)
            os.replace(entry, target)
            installed.append(entry.name)
    except OSError as e:
        for name in installed:  # roll back so out_dir looks as it did
            os.replace(out_dir / name, root / name)
        for name in replaced:
            os.replace(trash / name, out_dir / name)
        raise DarklensError(f"{out_dir}: cannot move the unpacked files in ({one_line(e)})") \
            from None
    finally:
        shutil.rmtree(trash, ignore_errors=True)
