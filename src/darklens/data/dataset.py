"""``open_dataset``: a dataset folder or zip as packed arrays, one view per split."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from darklens.data.cache import Packed, load_or_build
from darklens.data.layout import ALL_SPLIT, list_dataset, natural_key, scan_folder, scan_zip
from darklens.data.readers import read_image
from darklens.errors import DarklensError

#: problems that make a dataset unusable for training or evaluation
FATAL = ("unreadable", "pickled", "size_mismatch", "unknown_class", "unknown_folder", "nan_inf")


@dataclass
class SplitData:
    """The images of one split, in file order."""

    name: str
    images: np.ndarray  # (N, H, W) float32, read-only
    labels: np.ndarray  # (N,) int64
    paths: list[str]
    sha256: list[str]
    meta: list[dict]

    def __len__(self) -> int:
        return len(self.labels)


class PackedDataset:
    """A dataset read through the packed cache (see ``darklens.data.cache``)."""

    def __init__(self, root: Path, packed: Packed):
        self.root = root
        self.packed = packed
        records = packed.records
        self.splits: list[str] = [s for s in packed.manifest["splits"]
                                  if any(r["split"] == s for r in records)]
        shape = packed.manifest["image_shape"]
        self.image_shape: tuple[int, int] = tuple(shape) if shape else (0, 0)
        self._index = {s: np.array([i for i, r in enumerate(records) if r["split"] == s],
                                   dtype=np.int64) for s in self.splits}

    def split(self, name: str) -> SplitData:
        """The images of split ``name``; ``all`` concatenates every split."""
        if name == ALL_SPLIT and ALL_SPLIT not in self.splits:
            idx = np.arange(len(self.packed.records))
        elif name in self._index:
            idx = self._index[name]
        else:
            raise DarklensError(
                f"{self.root}: no split {name!r} (available: {', '.join(self.splits)})")
        records = self.packed.records
        contiguous = len(idx) == 0 or (idx[-1] - idx[0] + 1 == len(idx))
        # splits are stored one after another, so a slice keeps the memmap (no copy)
        images = (self.packed.images[idx[0]: idx[-1] + 1] if contiguous and len(idx)
                  else self.packed.images[idx])
        return SplitData(
            name=name, images=images, labels=self.packed.labels[idx],
            paths=[records[i]["path"] for i in idx],
            sha256=[records[i]["sha256"] for i in idx],
            meta=[records[i].get("meta", {}) for i in idx],
        )

    def __repr__(self) -> str:
        counts = {s: len(v) for s, v in self._index.items()}
        return f"PackedDataset({self.root}, shape={self.image_shape}, splits={counts})"


def open_dataset(
    root: str | Path, allow_pickle: bool = False, cache_dir: str | Path | None = None,
    progress: bool = True, strict: bool = True,
) -> PackedDataset:
    """Open a dataset folder or zip of any DeepLense layout through the packed cache.

    Args:
        root: dataset folder or ``.zip``.
        allow_pickle: load pickled object arrays (Model I ``axion``); unpickling runs code.
        cache_dir: where packed arrays go (default ``$DARKLENS_CACHE/packed``).
        progress: show a progress bar while packing.
        strict: raise on the first problem that makes the data unusable (unreadable, pickled,
            odd-sized or non-finite images, unknown folders). ``darklens inspect`` lists them all.
    """
    root = Path(root)
    listing = list_dataset(root)
    packed = load_or_build(listing, allow_pickle, cache_dir, progress)
    ds = PackedDataset(root, packed)
    if strict:
        problems = [p for p in packed.problems if p.kind in FATAL]
        problems += [_nan_problem(r) for r in packed.records if not r["finite"]]
        if problems:
            p = problems[0]
            more = f" (+{len(problems) - 1} more; run `darklens inspect {root}`)" \
                if len(problems) > 1 else ""
            raise DarklensError(f"{root / p.path}: {p.detail}{more}")
        if not packed.records:
            raise DarklensError(f"{root}: no readable images")
    return ds


def _nan_problem(record: dict):
    from darklens.data.layout import Problem

    return Problem("nan_inf", record["path"], "image holds NaN or Inf pixels")


def iter_image_inputs(
    inputs: Iterable[str | Path], allow_pickle: bool = False
) -> Iterator[tuple[str, np.ndarray | DarklensError]]:
    """Yield ``(display_path, image)`` for .npy files, folders and zips, file by file.

    Folders and zips are walked for every ``.npy`` file at any depth (class folder names do not
    matter for prediction), in natural order; shown paths keep their folders
    (``INPUT/val/sphere/1.npy``). A file that cannot be read yields ``(path, DarklensError)``
    instead of stopping the walk, so callers choose between stopping and skipping. A missing
    input or an unreadable zip raises.
    """
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise DarklensError(f"{path}: no such file or folder")
        if path.is_dir():
            files, _ = scan_folder(path)
            for rel in sorted((f for f in files if f.endswith(".npy")), key=_natural_path):
                yield from _one(path / rel, str(Path(item) / rel), allow_pickle)
        elif zipfile.is_zipfile(path):
            files, _ = scan_zip(path)
            with zipfile.ZipFile(path) as zf:
                for rel in sorted((f for f in files if f.endswith(".npy")), key=_natural_path):
                    shown = f"{item}/{rel}"
                    try:
                        source = zf.read(rel)
                    except (OSError, zipfile.BadZipFile) as e:
                        yield shown, DarklensError(f"{shown}: cannot read ({e})")
                        continue
                    yield from _one(source, shown, allow_pickle)
        else:
            yield from _one(path, str(item), allow_pickle)


def _natural_path(rel: str) -> tuple:
    return tuple(natural_key(part) for part in rel.split("/"))


def _one(source, shown: str, allow_pickle: bool):
    try:
        image, _ = read_image(source, shown, allow_pickle)
    except DarklensError as e:
        yield shown, e
        return
    if not np.isfinite(image).all():
        yield shown, DarklensError(f"{shown}: image holds NaN or Inf pixels")
        return
    yield shown, image
