"""Find the images of a dataset: which file is which split and class, in a folder or a zip.

Two layouts are understood, read in place:

* split folders ``ROOT/{train,val,test}/CLASS/*.npy`` (the Common Test ``dataset.zip``);
* class folders directly under ROOT (DeepLenseSim Model I-III), reported as split ``all``.

A root whose only entry is one folder is read through it (``dataset.zip`` holds ``dataset/...``).
"""

from __future__ import annotations

import os
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from darklens.data.classes import SPLIT_NAMES, class_index, known_class_names
from darklens.errors import DarklensError

ALL_SPLIT = "all"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset. ``path`` is relative to the dataset root."""

    kind: str
    path: str
    detail: str

    def as_dict(self) -> dict:
        return {"kind": self.kind, "path": self.path, "detail": self.detail}


@dataclass(frozen=True)
class Entry:
    """One image file: where it is and what the folders say it is."""

    path: str  # relative to the dataset root, posix
    split: str
    label: int
    size: int
    mtime: int


@dataclass
class Listing:
    """Every image file of a dataset plus the problems seen while listing."""

    root: Path
    is_zip: bool
    entries: list[Entry]
    problems: list[Problem] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    class_dirs: dict[str, list[str]] = field(default_factory=dict)  # split -> class folder paths
    _local: threading.local = field(default_factory=threading.local, repr=False)

    def read_bytes(self, entry: Entry) -> bytes | Path:
        """The file's bytes (zip member) or its path (folder); what ``read_image`` accepts."""
        if not self.is_zip:
            return self.root / entry.path
        # one ZipFile handle per thread: concurrent reads of one handle are not safe
        zf = getattr(self._local, "zf", None)
        if zf is None:
            zf = self._local.zf = zipfile.ZipFile(self.root)
        return zf.read(entry.path)


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def scan_folder(root: Path) -> tuple[dict[str, tuple[int, int]], set[str]]:
    files: dict[str, tuple[int, int]] = {}
    dirs: set[str] = set()
    stack = [("", root)]
    while stack:
        rel, path = stack.pop()
        try:
            it = os.scandir(path)
        except OSError as e:
            raise DarklensError(f"{path}: cannot list folder ({e.strerror})") from None
        with it:
            for d in it:
                if _is_hidden(d.name):
                    continue
                sub = f"{rel}{d.name}"
                if d.is_dir(follow_symlinks=True):
                    dirs.add(sub)
                    stack.append((sub + "/", Path(d.path)))
                else:
                    st = d.stat()
                    files[sub] = (st.st_size, st.st_mtime_ns)
    return files, dirs


def scan_zip(root: Path) -> tuple[dict[str, tuple[int, int]], set[str]]:
    try:
        with zipfile.ZipFile(root) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise DarklensError(f"{root}: not a readable zip file ({e})") from None
    files: dict[str, tuple[int, int]] = {}
    dirs: set[str] = set()
    for info in infos:
        parts = PurePosixPath(info.filename).parts
        if not parts or any(_is_hidden(p) for p in parts):
            continue
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]))
        name = "/".join(parts)
        if info.is_dir():
            dirs.add(name)
        else:
            # CRC stands in for mtime: it changes whenever the content does
            files[name] = (info.file_size, info.CRC)
    return files, dirs


def _children(prefix: str, names) -> set[str]:
    n = len(prefix)
    return {p[n:].split("/", 1)[0] for p in names if p.startswith(prefix) and len(p) > n}


def list_dataset(root: str | Path) -> Listing:
    """List a dataset folder or zip. Missing, empty or unreadable roots raise one line."""
    root = Path(root)
    if not root.exists():
        raise DarklensError(f"{root}: no such file or folder")
    is_zip = root.is_file()
    if is_zip and not zipfile.is_zipfile(root):
        raise DarklensError(f"{root}: not a folder and not a readable zip file")
    files, dirs = scan_zip(root) if is_zip else scan_folder(root)
    if not files and not dirs:
        raise DarklensError(f"{root}: empty {'zip' if is_zip else 'folder'}, no images to read")

    prefix = ""
    top = _children(prefix, list(files) + list(dirs))
    while len(top) == 1 and (prefix + next(iter(top))) in dirs:
        only = next(iter(top))
        if only.lower() in SPLIT_NAMES or class_index(only) is not None:
            break
        prefix = f"{prefix}{only}/"
        top = _children(prefix, list(files) + list(dirs))

    listing = Listing(root=root, is_zip=is_zip, entries=[])
    subdirs = {c for c in top if prefix + c in dirs}
    if any(c.lower() in SPLIT_NAMES for c in subdirs):
        for name in sorted(subdirs):
            if name.lower() in SPLIT_NAMES:
                _add_classes(listing, files, dirs, f"{prefix}{name}/", name.lower())
            else:
                listing.problems.append(Problem(
                    "unknown_folder", prefix + name,
                    f"not a split ({', '.join(SPLIT_NAMES)}) or class folder"))
        stray_files = [f for f in top if prefix + f in files]
    else:
        _add_classes(listing, files, dirs, prefix, ALL_SPLIT)
        stray_files = []
    for f in sorted(stray_files):
        if f.endswith(".npy"):
            listing.problems.append(Problem("stray_file", prefix + f, "not inside a class folder"))
    order = {s: i for i, s in enumerate((*SPLIT_NAMES, ALL_SPLIT))}
    listing.splits = sorted({e.split for e in listing.entries} | set(listing.class_dirs),
                            key=lambda s: order.get(s, 99))
    if not listing.entries and not listing.problems:
        raise DarklensError(f"{root}: no .npy images found in the class folders")
    return listing


def _add_classes(listing: Listing, files, dirs, prefix: str, split: str) -> None:
    names = _children(prefix, list(files) + list(dirs))
    # label order (no, sphere, vort), whatever the folders are called
    for name in sorted(names, key=lambda n: (_label_or(n, 9), n)):
        path = prefix + name
        if path not in dirs:
            if name.endswith(".npy"):
                listing.problems.append(Problem("stray_file", path, "not inside a class folder"))
            continue
        label = class_index(name)
        if label is None:
            listing.problems.append(Problem(
                "unknown_class", path,
                f"unknown class folder {name!r} (known: {known_class_names()})"))
            continue
        listing.class_dirs.setdefault(split, []).append(path)
        images = sorted(
            (f for f in _children(path + "/", files) if f.endswith(".npy")), key=natural_key)
        if not images:
            listing.problems.append(
                Problem("empty_class", path, "class folder holds no .npy files"))
        for f in images:
            size, mtime = files[f"{path}/{f}"]
            listing.entries.append(Entry(f"{path}/{f}", split, label, size, mtime))


def _label_or(name: str, default: int) -> int:
    label = class_index(name)
    return default if label is None else label


def natural_key(name: str) -> tuple:
    """Sort 2.npy before 10.npy, as a person would."""
    stem = name[:-4] if name.endswith(".npy") else name
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)
