"""``darklens predict``: class probabilities for .npy files, folders and zips, to one CSV.

Folders and zips in a dataset layout go through the packed cache (one memmap, read once, reused
on the next run); anything else (single files, folders of loose .npy files) is read file by file.
Both paths name images the same way, ``INPUT/<path inside INPUT>``, so a relative input keeps the
class folder in the CSV (``data/val/sphere/1.npy``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from darklens.config import atomic_write_text, check_output_file
from darklens.errors import DarklensError
from darklens.evaluation.inference import enable_cudnn_autotune, predict_proba, resolve_device
from darklens.evaluation.report import predictions_csv

#: problems meaning the cache misses readable .npy files (outside class folders, or of another
#: size than the rest): such inputs are read file by file instead
_NOT_COVERED = ("stray_file", "unknown_folder", "unknown_class", "size_mismatch")


def _tty() -> bool:
    """Progress bars only on a terminal: logs and captured stderr stay one line per message."""
    return sys.stderr.isatty()


def _shown(item: str, rel: str, is_zip: bool) -> str:
    """How ``iter_image_inputs`` names a file ``rel`` inside input ``item``."""
    return f"{item}/{rel}" if is_zip else str(Path(item) / rel)


def _natural(path: str) -> tuple:
    from darklens.data.layout import natural_key

    return tuple(natural_key(part) for part in path.split("/"))


def _from_cache(item: str, allow_pickle: bool, progress: bool):
    """``(images, shown_paths, bad)`` of a dataset-layout folder/zip, or None to read per file.

    ``bad`` lists ``(shown_path, message)`` for files the cache could not hold.
    """
    from darklens.data import open_dataset

    try:
        ds = open_dataset(item, allow_pickle=allow_pickle, progress=progress and _tty(),
                          strict=False)
    except DarklensError:
        return None  # not a dataset layout (or empty): the per-file walk reports what is wrong
    packed = ds.packed
    problems = packed.problems
    if any(p.kind in _NOT_COVERED for p in problems):
        return None
    is_zip = bool(packed.manifest.get("is_zip"))
    bad = [(_shown(item, p.path, is_zip), p.detail) for p in problems if p.path.endswith(".npy")]
    records = packed.records
    good = [i for i, r in enumerate(records) if r["finite"]]
    bad += [(_shown(item, records[i]["path"], is_zip), "image holds NaN or Inf pixels")
            for i, r in enumerate(records) if not r["finite"]]
    shown = [_shown(item, records[i]["path"], is_zip) for i in good]
    # natural path order, the same order as the per-file walk
    order = sorted(range(len(good)), key=lambda j: _natural(records[good[j]]["path"]))
    index = np.asarray([good[j] for j in order], dtype=np.int64)
    bad.sort(key=lambda b: _natural(b[0]))
    return _Indexed(packed.images, index), [shown[j] for j in order], bad


class _Indexed:
    """A lazy ``images[index]`` that reads only the slice asked for (keeps the memmap on disk)."""

    def __init__(self, images: np.ndarray, index: np.ndarray):
        self.images, self.index = images, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: slice) -> np.ndarray:
        idx = self.index[item]
        if len(idx) and idx[-1] - idx[0] + 1 == len(idx) and np.all(np.diff(idx) == 1):
            return self.images[idx[0]: idx[-1] + 1]
        return self.images[idx]


def _per_file(items: list[str], allow_pickle: bool) -> Iterator[tuple[str, object]]:
    from darklens.data import iter_image_inputs

    yield from iter_image_inputs(items, allow_pickle=allow_pickle)


def _groups(inputs: list[str], allow_pickle: bool, progress: bool, batch_size: int):
    """Yield ``("bad", path, message)`` or ``("images", paths, array)`` in input order."""
    for item in inputs:
        path = Path(item)
        cached = _from_cache(item, allow_pickle, progress) if path.is_dir() or (
            path.is_file() and path.suffix.lower() == ".zip") else None
        if cached is not None:
            images, shown, bad = cached
            for b in bad:
                yield ("bad", *b)
            if shown:
                yield ("images", shown, images)
            continue
        # file by file: batch consecutive images of one shape
        paths: list[str] = []
        stack: list[np.ndarray] = []
        walk = tqdm(_per_file([item], allow_pickle), desc=f"reading {item}", unit="file",
                    disable=None if progress else True, leave=False)
        for shown_path, image in walk:
            if isinstance(image, DarklensError):
                yield ("bad", shown_path, str(image).split(": ", 1)[-1])
                continue
            if stack and (image.shape != stack[0].shape or len(stack) >= batch_size):
                yield ("images", paths, np.stack(stack))
                paths, stack = [], []
            paths.append(shown_path)
            stack.append(image)
        if stack:
            yield ("images", paths, np.stack(stack))


def predict(
    model: str | Path,
    inputs: list[str],
    *,
    out: str | Path,
    skip_bad: bool = False,
    tta: bool = False,
    allow_pickle: bool = False,
    device: str = "auto",
    batch_size: int = 256,
    progress: bool = True,
) -> int:
    """Write ``out`` (CSV: ``path, p_no, p_sphere, p_vort, pred``), one row per image.

    Args:
        model: run folder, checkpoint file or ``pretrained:<name>``.
        inputs: .npy files, folders (any depth) and zips.
        out: CSV path, written atomically (nothing is written when a bad file stops the run).
        skip_bad: list unreadable files on stderr and predict the rest; without it the first bad
            file stops the run with one line naming it.
        tta: average the 8 D4 rotations/flips.
        allow_pickle: read pickled .npy files (runs code from the files).
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: images per forward pass.
        progress: progress bars on stderr.

    Returns:
        Exit code 0 (skipped files, if any, were asked for with ``skip_bad`` and listed).
    """
    from darklens.checkpoint import load_checkpoint

    # before the model and the images: a bad --out must not cost a whole inference run
    out = check_output_file(out)
    torch_device = resolve_device(device)
    enable_cudnn_autotune(torch_device)
    net, meta = load_checkpoint(model, device=torch_device)
    all_paths: list[str] = []
    all_probs: list[np.ndarray] = []
    skipped = 0
    for kind, first, second in _groups(list(inputs), allow_pickle, progress, batch_size):
        if kind == "bad":
            if not skip_bad:
                raise DarklensError(f"{first}: {second} (pass --skip-bad to skip bad files)")
            print(f"darklens: skipped {first}: {second}", file=sys.stderr)
            skipped += 1
            continue
        all_paths += first
        # per-file batches are small and many: the reading bar already shows progress
        big = isinstance(second, _Indexed)
        all_probs.append(predict_proba(net, meta, second, batch_size=batch_size,
                                       device=torch_device, tta=tta, progress=progress and big))
    if not all_paths:
        raise DarklensError(f"{', '.join(map(str, inputs))}: no readable .npy images to predict")
    probs = np.concatenate(all_probs)
    atomic_write_text(out, predictions_csv(all_paths, probs))
    if skipped:
        print(f"darklens: predicted {len(all_paths)} images, skipped {skipped} bad files",
              file=sys.stderr)
    return 0
