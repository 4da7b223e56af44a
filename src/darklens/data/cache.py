"""The packed cache: a dataset's images in one contiguous memory-mapped array.

The first read of a dataset opens every file once and writes, under the cache folder,
``images.f32`` (N, H, W float32), ``labels.npy`` and ``manifest.json`` (path, split, class,
sha256 of the pixels, per-image flags and metadata, and the problems seen). Later reads map the
array and never open the image files again. The cache is keyed on the files' paths, sizes and
mtimes (zip: member CRCs), so any changed file invalidates it.

Location: ``$DARKLENS_CACHE/packed`` (default ``~/.cache/darklens/packed``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from darklens.data.layout import Entry, Listing, Problem
from darklens.data.readers import read_image
from darklens.errors import DarklensError

FORMAT_VERSION = 1
SHAPE_SAMPLE = 64  # files read up front to decide the dataset's image shape


def cache_root() -> Path:
    """Where packed datasets live (``$DARKLENS_CACHE`` or ``~/.cache/darklens``)."""
    base = os.environ.get("DARKLENS_CACHE") or Path.home() / ".cache" / "darklens"
    return Path(base) / "packed"


@dataclass
class Packed:
    """A packed dataset: the good images in one array, plus everything known per file."""

    images: np.ndarray  # (N, H, W) float32, read-only memmap
    labels: np.ndarray  # (N,) int64
    manifest: dict  # see build_cache
    directory: Path

    @property
    def records(self) -> list[dict]:
        return self.manifest["images"]

    @property
    def problems(self) -> list[Problem]:
        return [Problem(**p) for p in self.manifest["problems"]]


def fingerprint(listing: Listing, allow_pickle: bool) -> str:
    """A hash of everything that changes what the cache would hold."""
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT_VERSION, str(listing.root.resolve()), allow_pickle]).encode())
    for e in listing.entries:
        h.update(f"{e.path}\0{e.split}\0{e.label}\0{e.size}\0{e.mtime}\n".encode())
    for p in listing.problems:
        h.update(f"{p.kind}\0{p.path}\n".encode())
    return h.hexdigest()


def load_or_build(
    listing: Listing, allow_pickle: bool = False, cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Packed:
    """Map the packed cache of ``listing``, building it first when missing or stale."""
    base = Path(cache_dir) if cache_dir else cache_root()
    # one slot per (root, pickle flag): a rebuild replaces the stale copy instead of piling up
    slot = hashlib.sha256(f"{listing.root.resolve()}\0{allow_pickle}".encode()).hexdigest()[:20]
    directory = base / slot
    key = fingerprint(listing, allow_pickle)
    packed = _open(directory, key)
    if packed is None:
        # One builder per slot: DDP ranks (torchrun) all open the same new dataset at once, and
        # a second builder's swap would delete the first one's copy while it is being read.
        base.mkdir(parents=True, exist_ok=True)
        with _exclusive(base / f"{slot}.lock"):
            packed = _open(directory, key)  # built by whoever held the lock before us
            if packed is None:
                _build(listing, allow_pickle, directory, key, progress)
                packed = _open(directory, key)
        if packed is None:
            raise DarklensError(f"{directory}: packed cache could not be read back after writing")
    return packed


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """An advisory lock between processes of this machine.

    Without one (no fcntl on Windows; some network file systems refuse flock) the cache still
    works for a single process, but concurrent first reads of one dataset can race as before.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # ENOLCK / EOPNOTSUPP: build unlocked rather than not at all
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open(directory: Path, key: str) -> Packed | None:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("fingerprint") != key:
        return None
    n = len(manifest["images"])
    h, w = manifest["image_shape"] or (0, 0)
    try:
        images = (np.memmap(directory / "images.f32", dtype=np.float32, mode="r", shape=(n, h, w))
                  if n else np.zeros((0, h, w), np.float32))
        labels = np.load(directory / "labels.npy", allow_pickle=False)
    except (OSError, ValueError):
        return None
    return Packed(images=images, labels=labels, manifest=manifest, directory=directory)


def _read(listing: Listing, entry: Entry, allow_pickle: bool):
    try:
        image, meta = read_image(listing.read_bytes(entry), entry.path, allow_pickle)
        return image, meta, None
    except DarklensError as e:
        msg = str(e).split(": ", 1)[-1]
        kind = "pickled" if "pickled" in msg and "--allow-pickle" in msg else "unreadable"
        return None, None, Problem(kind, entry.path, msg)
    except OSError as e:
        return None, None, Problem("unreadable", entry.path, f"cannot read ({e})")


def _build(listing: Listing, allow_pickle: bool, directory: Path, key: str, progress: bool):
    entries = listing.entries
    workers = min(8, (os.cpu_count() or 2) * 2)
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    problems = list(listing.problems)
    records: list[dict] = []
    labels: list[int] = []
    try:
        with ThreadPoolExecutor(workers) as pool:
            sample = list(pool.map(lambda e: _read(listing, e, allow_pickle),
                                   entries[:SHAPE_SAMPLE]))
            shapes = Counter(img.shape for img, _, _ in sample if img is not None)
            shape = shapes.most_common(1)[0][0] if shapes else None
            with open(tmp / "images.f32", "wb") as out:
                results = pool.map(lambda e: _read(listing, e, allow_pickle),
                                   entries[SHAPE_SAMPLE:])
                bar = tqdm(zip(entries, [*sample, *_lazy(results)]), total=len(entries),
                           desc=f"packing {listing.root.name}", unit="img", disable=not progress,
                           leave=False)
                for entry, (image, meta, problem) in bar:
                    if problem is not None:
                        problems.append(problem)
                        continue
                    if image.shape != shape:
                        problems.append(Problem(
                            "size_mismatch", entry.path,
                            f"image is {image.shape[0]}x{image.shape[1]}, the rest are "
                            f"{shape[0]}x{shape[1]}"))
                        continue
                    out.write(image.tobytes())
                    labels.append(entry.label)
                    records.append(_record(entry, image, meta))
        np.save(tmp / "labels.npy", np.asarray(labels, dtype=np.int64))
        manifest = {
            "fingerprint": key, "format": FORMAT_VERSION, "root": str(listing.root),
            "is_zip": listing.is_zip, "splits": listing.splits,
            "image_shape": list(shape) if shape else None,
            "class_dirs": listing.class_dirs,
            "images": records, "problems": [p.as_dict() for p in problems],
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest))
        # replace the stale copy; a concurrent builder of the same data may have won the race
        if directory.exists():
            shutil.rmtree(directory, ignore_errors=True)
        try:
            os.replace(tmp, directory)
        except OSError:
            if _open(directory, key) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _lazy(results):
    yield from results


def _record(entry: Entry, image: np.ndarray, meta: dict) -> dict:
    finite = bool(np.isfinite(image).all())
    rec = {
        "path": entry.path, "split": entry.split, "label": entry.label,
        "sha256": hashlib.sha256(image.tobytes()).hexdigest(),
        "finite": finite,
        "min": float(np.nanmin(image)) if finite else None,
        "max": float(np.nanmax(image)) if finite else None,
        "dtype": meta.pop("source_dtype", "float32"),
    }
    if meta:
        rec["meta"] = meta
    return rec
