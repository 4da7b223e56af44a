"""Checkpoints: weights in safetensors, everything that rebuilds the model in a JSON beside them.

A checkpoint is a pair ``<stem>.safetensors`` + ``<stem>.json`` (nanoGPT's ``model_args`` idea):
the JSON names the registered model and its kwargs, the class names, the input preprocessing, the
resolved config, metrics, the seed and the darklens version. Nothing is ever unpickled.

Model specs accepted by :func:`load_checkpoint` (and so by ``darklens evaluate/predict/export``):
a run folder (``best.*``, else ``last.*``), either file of a pair, or ``pretrained:<name>`` for the
weights shipped in ``darklens/pretrained/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.resources
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from darklens import CLASSES, __version__
from darklens.config import usual_permissions
from darklens.errors import DarklensError

PRETRAINED_PREFIX = "pretrained:"
WEIGHTS_SUFFIX = ".safetensors"
META_SUFFIX = ".json"

# Prefixes that wrappers add to state_dict keys: DDP (module.) and torch.compile (_orig_mod.).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _unwrap_key(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def clean_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unshared copies of ``model``'s tensors, wrapper prefixes stripped.

    safetensors refuses tensors that share storage (tied weights) or are non-contiguous views,
    so every tensor is cloned into its own storage.
    """
    # e2cnn's R2Conv adds its expanded filter as buffers in eval mode only: store the weights of
    # the train-mode module, which load into a freshly built model whatever its mode.
    was_training = model.training
    model.train()
    try:
        out: dict[str, torch.Tensor] = {}
        for key, value in model.state_dict().items():
            out[_unwrap_key(key)] = value.detach().to("cpu").contiguous().clone()
    finally:
        model.train(was_training)
    return out


def _json_default(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.asdict(x)
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return x.tolist()
    if isinstance(x, (np.generic,)):
        return x.item()
    if isinstance(x, (set, frozenset)):
        return sorted(x)
    raise TypeError(f"cannot store {type(x).__name__} in a checkpoint JSON")


def _atomic_replace(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then move the temp file onto ``path`` (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        usual_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    path_stem: str | Path,
    model: nn.Module,
    *,
    model_name: str,
    model_kwargs: dict,
    preprocessing: dict,
    config: Any,
    metrics: dict,
    seed: int | None = None,
    extra: dict | None = None,
) -> tuple[Path, Path]:
    """Write ``<path_stem>.safetensors`` then ``<path_stem>.json``, each atomically.

    The JSON is written last and records the weights' sha256, so a reader that finds the JSON
    finds complete weights, and a JSON never pairs silently with another run's weights.

    Args:
        path_stem: e.g. ``runs/x/best`` (a suffix, if given, is replaced).
        model: the model; DDP / torch.compile wrapper prefixes are stripped from its keys.
        model_name: registered name that rebuilds it (``create_model(model_name, **model_kwargs)``).
        model_kwargs: JSON-serialisable kwargs for ``create_model``.
        preprocessing: e.g. ``{"subtract": 0.5, "input_size": [150, 150]}``
            (see :func:`preprocess`).
        config: the resolved config (dataclass or dict).
        metrics: numbers worth showing (e.g. ``{"val_auc_macro": 0.99}``).
        seed: the run's seed.
        extra: more top-level JSON keys (e.g. ``{"epoch": 12}``); may not replace the core keys.

    Returns:
        The (weights, json) paths written.
    """
    from safetensors.torch import save_file

    stem = Path(path_stem)
    if stem.suffix in (WEIGHTS_SUFFIX, META_SUFFIX):
        stem = stem.with_suffix("")
    weights_path = stem.with_name(stem.name + WEIGHTS_SUFFIX)
    meta_path = stem.with_name(stem.name + META_SUFFIX)

    meta: dict[str, Any] = {
        "model": model_name,
        "model_kwargs": dict(model_kwargs),
        "classes": list(CLASSES),
        "preprocessing": dict(preprocessing),
        "config": config,
        "metrics": dict(metrics),
        "darklens_version": __version__,
        "seed": seed,
    }
    for key, value in (extra or {}).items():
        if key in meta:
            raise ValueError(f"extra key {key!r} would replace a core checkpoint key")
        meta[key] = value
    # Serialise before touching the disk: a bad value must not leave new weights + old JSON.
    state = clean_state_dict(model)
    meta["weights_file"] = weights_path.name

    _atomic_replace(weights_path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    meta["weights_sha256"] = file_sha256(weights_path)
    text = json.dumps(meta, indent=2, default=_json_default, allow_nan=True) + "\n"
    _atomic_replace(meta_path, lambda tmp: Path(tmp).write_text(text))
    return weights_path, meta_path


def _pretrained_dir():
    return importlib.resources.files("darklens").joinpath("pretrained")


def list_pretrained() -> list[dict]:
    """Shipped pretrained checkpoints: ``[{"name", "model", "metrics", "description", "trained"}]``.

    ``metrics`` of a packaged model (``benchmarks/package_pretrained.py``) are its test-split
    numbers (``accuracy``, ``auc_macro``, ``ci95``, ...); ``trained`` records how it was made.
    """
    out = []
    folder = _pretrained_dir()
    if not folder.is_dir():
        return out
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(META_SUFFIX):
            continue
        name = entry.name[: -len(META_SUFFIX)]
        try:
            meta = json.loads(entry.read_text())
        except (OSError, ValueError):
            continue  # a broken shipped file is reported when it is loaded, not when listed
        out.append({
            "name": name,
            "model": meta.get("model"),
            "metrics": meta.get("metrics", {}),
            "description": meta.get("description", ""),
            "trained": meta.get("trained", {}),
        })
    return out


@contextlib.contextmanager
def _resolve(spec: str | Path) -> Iterator[tuple[Path, Path]]:
    """Yield the (weights, json) paths a model spec names; DarklensError when it names none."""
    text = str(spec)
    if text.startswith(PRETRAINED_PREFIX):
        name = text[len(PRETRAINED_PREFIX):]
        folder = _pretrained_dir()
        meta_res = folder.joinpath(name + META_SUFFIX)
        if not name or "/" in name or not meta_res.is_file():
            names = ", ".join(p["name"] for p in list_pretrained()) or "none shipped"
            raise DarklensError(f"{text}: no such pretrained model (available: {names})")
        with importlib.resources.as_file(meta_res) as meta_path, importlib.resources.as_file(
            folder.joinpath(name + WEIGHTS_SUFFIX)
        ) as weights_path:
            yield Path(weights_path), Path(meta_path)
        return

    path = Path(spec)
    if path.is_dir():
        for stem in ("best", "last"):
            if (path / (stem + META_SUFFIX)).exists() or (path / (stem + WEIGHTS_SUFFIX)).exists():
                path = path / stem
                break
        else:
            raise DarklensError(f"{spec}: folder has no best.json/best.safetensors or last.*")
    elif path.suffix in (WEIGHTS_SUFFIX, META_SUFFIX):
        path = path.with_suffix("")
    elif not path.with_name(path.name + META_SUFFIX).exists():
        raise DarklensError(
            f"{spec}: not a run folder, .safetensors/.json checkpoint or pretrained:<name>"
        )
    yield path.with_name(path.name + WEIGHTS_SUFFIX), path.with_name(path.name + META_SUFFIX)


def read_meta(meta_path: Path) -> dict:
    """Read and sanity-check a checkpoint JSON; a bad file is a one-line DarklensError."""
    if not meta_path.is_file():
        raise DarklensError(f"{meta_path}: checkpoint JSON not found")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DarklensError(f"{meta_path}: not a readable checkpoint JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), str):
        raise DarklensError(f"{meta_path}: checkpoint JSON has no 'model' name")
    if not isinstance(meta.get("model_kwargs", {}), dict):
        raise DarklensError(f"{meta_path}: 'model_kwargs' must be a mapping")
    return meta


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_checkpoint(spec: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model from a checkpoint and load its weights strictly.

    The model is built in float32 and the stored tensors are copied into it, so float16 weights
    (shipped models, see ``benchmarks/half_checkpoint.py``) load as float32.

    Args:
        spec: run folder (``best.*``, else ``last.*``), a ``.safetensors`` or ``.json`` file of a
            pair, or ``pretrained:<name>``.
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` or a torch device.

    Returns:
        ``(model, meta)``: the model in eval mode on ``device``, and the JSON dict with
        ``meta["source"]`` set to the weights file read.

    Raises:
        DarklensError: missing, unreadable, corrupt or mismatched files (the message names them).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from darklens.models import create_model

    with _resolve(spec) as (weights_path, meta_path):
        meta = read_meta(meta_path)
        if not weights_path.is_file():
            raise DarklensError(f"{weights_path}: checkpoint weights not found")
        expected = meta.get("weights_sha256")
        if expected and file_sha256(weights_path) != expected:
            raise DarklensError(
                f"{weights_path}: weights do not match the sha256 in {meta_path.name} "
                "(corrupt, or from another run)"
            )
        try:
            state = load_file(str(weights_path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise DarklensError(f"{weights_path}: not a readable safetensors file ({e})") from None
        meta["source"] = str(spec) if str(spec).startswith(PRETRAINED_PREFIX) else str(weights_path)

    model = create_model(meta["model"], **meta.get("model_kwargs", {}))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        if len(first) > 300:  # every missing key of a whole network: a line, not a page
            first = first[:300].rsplit(",", 1)[0] + ", ..."
        raise DarklensError(
            f"{weights_path}: weights do not fit model {meta['model']!r} ({first})"
        ) from None
    return model.to(_resolve_device(device)).eval(), meta


def preprocess(images: np.ndarray | torch.Tensor, meta: dict) -> torch.Tensor:
    """Turn stored images into model input as recorded in ``meta["preprocessing"]``.

    Steps, in order:
      1. ``(N, H, W)`` gains a channel axis -> ``(N, 1, H, W)``; float32 tensor.
      2. ``"input_size": [h, w]``: an image at least that large in both axes is center-cropped
         (the pixel scale in arcsec/px, which the physics depends on, is kept); any other size
         is resized bilinearly (``align_corners=False``), the only option when it is smaller.
         Upscaling by more than 10% warns (``UserWarning``): the model then sees another pixel
         scale than it was trained on, and its probabilities are not to be trusted.
      3. ``"subtract": s`` (scalar or per-channel list): ``x - s`` (the notebook used 0.5).
      4. ``"divide": d`` (optional, scalar or per-channel list): ``x / d``.

    Args:
        images: ``(N, H, W)`` or ``(N, C, H, W)``, numpy or torch, any real dtype.
        meta: a checkpoint JSON dict (only ``"preprocessing"`` is read).

    Returns:
        float32 tensor ``(N, C, h, w)`` on the input's device (CPU for numpy input).
    """
    if isinstance(images, torch.Tensor):
        x = images
    else:
        array = np.asarray(images)
        if array.dtype.kind not in "fiub":
            raise DarklensError(f"images: expected a numeric array, got dtype {array.dtype}")
        if not array.flags.writeable:  # read-only memmaps: torch warns on sharing them
            array = array.astype(np.float32, copy=True)
        x = torch.from_numpy(array)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise DarklensError("images: expected (N, H, W) or (N, C, H, W), got shape "
                            f"{tuple(x.shape)}")
    x = x.to(torch.float32)
    prep = meta.get("preprocessing") or {}

    size = prep.get("input_size")
    if size is not None:
        h, w = (int(v) for v in size)
        height, width = x.shape[-2:]
        if (height, width) != (h, w):
            if height >= h and width >= w:
                top, left = (height - h) // 2, (width - w) // 2
                x = x[..., top : top + h, left : left + w]
            else:
                _warn_if_upscaled((height, width), (h, w))
                x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)

    def per_channel(value: Any) -> torch.Tensor:
        return torch.as_tensor(value, dtype=torch.float32, device=x.device).reshape(-1, 1, 1)

    if prep.get("subtract") is not None:
        x = x - per_channel(prep["subtract"])
    if prep.get("divide") is not None:
        x = x / per_channel(prep["divide"])
    return x.contiguous()


#: upscaling beyond this factor warns: the model sees a pixel scale it was not trained on
UPSCALE_WARN_FACTOR = 1.1


def _warn_if_upscaled(size: tuple[int, int], input_size: tuple[int, int]) -> None:
    """Warn when ``size`` must be stretched by more than 10% to reach the model's input size.

    A model trained on 150x150 images at 0.05"/px and fed 32x32 images stretched to 150x150 sees
    arcs ~5x wider than any it was trained on and still answers with confidence. One warning per
    call; Python's default filter then shows an identical message (same sizes) only once.
    """
    factor = max(input_size[0] / size[0], input_size[1] / size[1])
    if factor > UPSCALE_WARN_FACTOR:
        warnings.warn(
            f"images of {size[0]}x{size[1]} px are upscaled {factor:.2g}x to the model's input "
            f"size {input_size[0]}x{input_size[1]}: the pixel scale (arcsec/px) changes, so the "
            "predictions are unreliable; use images of the size the model was trained on",
            UserWarning, stacklevel=3)
