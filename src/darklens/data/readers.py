"""Decode one DeepLense ``.npy`` file into a float32 (H, W) image.

Layouts seen in the wild (../shared/DEEPLENSE.md): (H, W), (1, H, W), (H, W, 1); Model II's flat
(H*W,) and (H*W+1,) with the label appended; float16/32/64 and uint8; Model I's ``axion`` files
and one Model II variant are pickled object arrays, loaded only with ``allow_pickle=True``.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from darklens.errors import DarklensError

PICKLE_HINT = "it is a pickled object array; pass --allow-pickle only if you trust the file"


def load_npy(source: str | Path | bytes, name: str, allow_pickle: bool = False) -> np.ndarray:
    """``np.load`` one file (path or raw bytes) with pickles refused unless allowed."""
    try:
        buf = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
    except OSError as e:
        raise DarklensError(f"{name}: cannot open ({e.strerror})") from None
    with buf:
        # without the .npy magic numpy would try to unpickle the bytes: say what it really is
        if buf.read(6) != b"\x93NUMPY":
            raise DarklensError(f"{name}: not a .npy file (no NUMPY header)")
        buf.seek(0)
        return _load(buf, name, allow_pickle)


def _load(buf, name: str, allow_pickle: bool) -> np.ndarray:
    try:
        arr = np.load(buf, allow_pickle=allow_pickle)
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise DarklensError(f"{name}: {PICKLE_HINT}") from None
        raise DarklensError(f"{name}: not a readable .npy file ({e})") from None
    except (OSError, EOFError) as e:
        raise DarklensError(f"{name}: not a readable .npy file ({e})") from None
    except Exception as e:  # a corrupt pickle can raise anything
        raise DarklensError(f"{name}: not a readable .npy file ({type(e).__name__}: {e})") from None
    if isinstance(arr, np.lib.npyio.NpzFile):
        raise DarklensError(f"{name}: an .npz archive, expected one .npy array")
    return arr


def read_image(
    source: str | Path | bytes, name: str | None = None, allow_pickle: bool = False
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one image file.

    Args:
        source: a path, or the file's bytes (e.g. from a zip member).
        name: how to name the file in errors (defaults to the path).
        allow_pickle: load pickled object arrays (Model I ``axion``); unpickling runs code.

    Returns:
        ``(image, meta)``: image float32 (H, W); meta holds what the file carried besides pixels
        (``axion_mass``, ``embedded_label``, ``source_dtype``).
    """
    name = name or str(source)
    arr = load_npy(source, name, allow_pickle)
    return to_image(arr, name)


def to_image(arr: np.ndarray, name: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Turn a loaded array of any known layout into a float32 (H, W) image plus metadata."""
    meta: dict[str, Any] = {}
    if arr.dtype == object:
        arr, meta = _unpack_object_array(arr, name)
    meta["source_dtype"] = str(arr.dtype)
    arr = np.asarray(arr)
    # before any reshaping: a flat array of strings would otherwise fail inside the label's
    # float() with a bare ValueError instead of this file's one-line error
    if arr.dtype.kind not in "fiub":
        raise DarklensError(f"{name}: unsupported dtype {arr.dtype} for an image")
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    elif arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    elif arr.ndim == 1:
        arr, label = _unflatten(arr, name)
        if label is not None:
            meta["embedded_label"] = label
    if arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise DarklensError(f"{name}: unsupported array shape {tuple(arr.shape)} for an image")
    # uint8 images are 0..255 counts; bring them to the [0, 1] range the float files use.
    image = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
    return np.ascontiguousarray(image), meta


def _unpack_object_array(arr: np.ndarray, name: str) -> tuple[np.ndarray, dict[str, Any]]:
    # Model I axion: [image, axion_mass]
    if arr.shape == (2,) and isinstance(arr[0], np.ndarray) and np.isscalar(arr[1]):
        return np.asarray(arr[0]), {"axion_mass": float(arr[1])}
    # Model II variant: an object array of row vectors
    try:
        return np.stack([np.asarray(row, dtype=np.float64) for row in arr.reshape(-1)]), {}
    except (ValueError, TypeError):
        raise DarklensError(f"{name}: pickled object array of an unknown layout") from None


def _unflatten(arr: np.ndarray, name: str) -> tuple[np.ndarray, float | None]:
    """Model II flat files: (H*W,) or (H*W+1,) with the class label appended."""
    n = arr.shape[0]
    side = math.isqrt(n)
    if side * side == n:
        return arr.reshape(side, side), None
    side = math.isqrt(n - 1)
    if side * side == n - 1:
        return arr[:-1].reshape(side, side), float(arr[-1])
    raise DarklensError(f"{name}: flat array of {n} values is not a square image (+ label)")
