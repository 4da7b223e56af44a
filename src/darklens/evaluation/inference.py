"""Batched inference: images as stored -> class probabilities, optionally averaged over D4.

Rotations by 90 degrees and the two flips are exact symmetries of simulated lenses (the pixel grid
is square and nothing in the physics picks a direction), so averaging the softmax over the 8
elements of the dihedral group D4 removes orientation noise from the prediction.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from darklens.errors import DarklensError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; asking for CUDA without one is a user error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DarklensError("--device cuda: no CUDA device is available (use --device cpu)")
    return device


def enable_cudnn_autotune(device: torch.device) -> None:
    """Let cuDNN pick the fastest convolution for our fixed input size (evaluate/predict only:
    a global switch, so library callers such as training decide for themselves)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


@contextlib.contextmanager
def ieee_fp32(device: torch.device):
    """Full fp32 convolutions and matmuls on CUDA for the duration (TF32 off, restored after).

    PyTorch lets cuDNN convolutions use TF32 (10-bit mantissa) by default: logits then move by
    ~1e-3, enough to reorder near-tied scores, so a GPU AUC differed from the CPU's by more
    than 1e-3 on a small set (measured on an H200). Reported numbers must not depend on the
    device.
    """
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def d4_views(x: torch.Tensor) -> Iterator[torch.Tensor]:
    """The 8 images of ``x`` (B, C, H, W) under the dihedral group D4: 4 rotations x {id, flip}."""
    for flipped in (x, torch.flip(x, dims=(-1,))):
        for k in range(4):
            # contiguous: convolutions on the strided rot90 view run several times slower
            yield torch.rot90(flipped, k, dims=(-2, -1)).contiguous()


def _preprocess(batch: torch.Tensor, meta: dict) -> torch.Tensor:
    from darklens.checkpoint import preprocess

    x = preprocess(batch, meta)
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    return x.to(batch.device, dtype=torch.float32)


@torch.inference_mode()
def probs_for_batch(model: torch.nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Softmax probabilities (B, K) of a preprocessed batch ``x``; D4-averaged when ``tta``.

    With ``tta`` the 8 views go through the model as one batch of 8B: one forward pass instead
    of eight (far fewer kernel launches and thread barriers).
    """
    if not tta:
        return torch.softmax(model(x).float(), dim=1)
    views = torch.cat(list(d4_views(x)))
    probs = torch.softmax(model(views).float(), dim=1)
    return probs.reshape(8, len(x), -1).mean(dim=0)


def predict_proba(
    model: torch.nn.Module,
    meta: dict,
    images: np.ndarray,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    tta: bool = False,
    progress: bool = True,
) -> np.ndarray:
    """Class probabilities for ``images`` as stored (N, H, W) or (N, 1, H, W).

    The checkpoint's preprocessing (``meta["preprocessing"]``) is applied here, batch by batch on
    ``device``, so a read-only memmap of the packed cache streams through without a full copy.

    Args:
        model: the classifier (moved to ``device`` and put in eval mode).
        meta: checkpoint metadata from :func:`darklens.checkpoint.load_checkpoint`.
        images: pixels as stored in the files (e.g. in [0, 1]).
        batch_size: images per forward pass; with ``tta``, ``batch_size // 8`` images x 8 views.
        device: ``cpu``, ``cuda`` or ``auto``.
        tta: average the softmax over the 8 D4 rotations/flips.
        progress: show a progress bar on stderr.

    Returns:
        float64 array (N, num_classes) whose rows sum to one. On CUDA the model runs in IEEE
        fp32 (no TF32), so the numbers match the CPU's to ~1e-5.
    """
    device = resolve_device(device)
    model = model.to(device).eval()
    n = len(images)
    if tta:  # 8 views per image: keep the images per forward pass (and memory) as without TTA
        batch_size = max(1, batch_size // 8)
    out: list[torch.Tensor] = []
    warned = False
    bar = tqdm(total=n, desc="predicting" + (" (TTA x8)" if tta else ""), unit="img",
               disable=None if progress and n else True, leave=False)  # None: off without a TTY
    with bar, ieee_fp32(device):
        for start in range(0, n, batch_size):
            # a copy: the packed cache is a read-only memmap, which torch will not wrap
            chunk = np.array(images[start: start + batch_size], dtype=np.float32)
            if not warned and chunk.size and (chunk.max() > 1.5 or chunk.min() < -0.5):
                warned = True  # e.g. 8-bit images (0-255): confident nonsense, not an error
                warnings.warn(f"pixel values in [{chunk.min():g}, {chunk.max():g}]: darklens "
                              "models are trained on images scaled to [0, 1] (as simulated "
                              "and as in the DeepLense sets); rescale them first",
                              stacklevel=2)
            batch = torch.from_numpy(chunk).to(device)
            if batch.ndim == 3:
                batch = batch.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
            x = _preprocess(batch, meta)
            # stays on the device: no sync per batch, so reading the next batch overlaps compute
            out.append(probs_for_batch(model, x, tta))
            bar.update(len(chunk))
    if not out:
        num_classes = len(meta.get("classes", ())) or 3
        return np.zeros((0, num_classes))
    return torch.cat(out).double().cpu().numpy()
