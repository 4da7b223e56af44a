"""One epoch of training, evaluation over a whole split, EMA weights and the LR schedule."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from darklens import CLASSES
from darklens.training.signal import SignalSupervised, signal_loss


def cosine_with_warmup(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR factor of ``transformers.get_cosine_schedule_with_warmup`` (the seed notebook's).

    Linear from 0 to 1 over ``warmup_steps``, then half a cosine down to 0 at ``total_steps``.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


class EMA:
    """Exponential moving average of a model's weights; buffers (BN statistics) are copied.

    Evaluating the average instead of the last step's weights smooths the end of training.

    The average is kept in train mode between evaluations: e2cnn's R2Conv caches its expanded
    filter as extra buffers when switched to eval mode (and only then), so an average left in
    eval mode would both carry buffers the live model lacks and evaluate with a stale filter.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).train()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        # Warm-up (timm's ModelEmaV3): early on the average must not remember random init.
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        if not self.module.training:
            self.module.train()  # drop eval-mode caches (e2cnn filters) of the old weights
        ema_p = list(self.module.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - decay)
        live = dict(model.named_buffers())
        for name, b_ema in self.module.named_buffers():
            if name in live:
                b_ema.copy_(live[name])

    def state_dict(self) -> dict:
        """Weights of the average in train mode (no eval-mode caches), loadable anywhere."""
        if not self.module.training:
            self.module.train()
        return self.module.state_dict()


def amp_in_effect(device: torch.device, amp: str) -> str:
    """The autocast that ``amp`` gives on ``device``: bf16 on CUDA only (CPU runs stay fp32)."""
    return amp if amp == "bf16" and device.type == "cuda" else "none"


def autocast(device: torch.device, amp: str):
    """bf16 autocast on CUDA when asked; a no-op context otherwise (CPU runs stay fp32)."""
    if amp_in_effect(device, amp) == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` in the one stride pattern every batch gets (a copy when channels_last).

    ``contiguous(memory_format=channels_last)`` leaves a one-channel batch as it is whenever its
    strides already pass for channels_last, and several patterns do (the channel dim has size
    1). torch.compile guards on strides, so a trial batch and a D4-augmented one compiled the
    model twice (~30 s more on an H100). A clone into that memory format has canonical strides.
    """
    if channels_last:
        return x.clone(memory_format=torch.channels_last)
    return x.contiguous()


def train_one_epoch(model: nn.Module, batches: Iterable, *, n_steps: int, optimizer, scheduler,
                    loss_fn: Callable, subtract: float, device: torch.device, amp: str,
                    channels_last: bool, ema: EMA | None, grad_clip: float, desc: str,
                    show_progress: bool, step_hook: Callable[[int], None] | None = None,
                    signal_weight: float = 0.0) -> dict:
    """Train over ``batches``; returns mean loss, images seen and seconds (device-synced).

    Batches of ``(x, y, chi2)`` for a :class:`~darklens.training.signal.SignalSupervised`
    model add ``signal_weight`` times its map's loss; ``train_loss`` stays the classification
    loss alone (comparable across runs), and ``signal_loss`` is returned beside it.
    """
    model.train()
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    total_signal = torch.zeros((), device=device, dtype=torch.float64)
    skipped = torch.zeros((), device=device, dtype=torch.int64)
    n_images = 0
    with_signal = False
    start = time.perf_counter()
    bar = tqdm(total=n_steps, desc=desc, disable=not show_progress, leave=False)
    for step, (x, y, *chi2) in enumerate(batches):
        x = model_layout(x - subtract, channels_last)
        with autocast(device, amp):
            out = model(x)
        logits, predicted_map = out if isinstance(out, tuple) else (out, None)
        loss = loss_fn(logits.float(), y)
        objective = loss
        if predicted_map is not None:
            if not chi2:
                raise ValueError("a model with a signal head needs (x, y, chi2) batches")
            with_signal = True
            map_loss = signal_loss(predicted_map, chi2[0])
            objective = loss + signal_weight * map_loss
            total_signal += torch.nan_to_num(map_loss.detach()) * y.shape[0]
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        # The norm doubles as a divergence check: a non-finite gradient would poison the
        # optimizer moments and every later step, so such a step is skipped (as AMP's scaler
        # does). The flag stays on the device: a fused optimizer skips the step itself, so the
        # host never waits for the GPU and can queue the next steps' kernels meanwhile.
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(),
                                             grad_clip if grad_clip > 0 else math.inf)
        found_inf = (~torch.isfinite(grad_norm)).float()
        skip_on_device_step(optimizer, found_inf)
        skipped += found_inf.long()
        scheduler.step()
        if ema is not None:
            ema.update(_unwrap(model))
        # Accumulate on the device: a .item() per step would stall the GPU pipeline.
        total_loss += torch.nan_to_num(loss.detach()) * y.shape[0]
        n_images += y.shape[0]
        bar.update(1)
        if step_hook is not None:
            step_hook(step)
    bar.close()
    mean_loss = float(total_loss.item()) / max(1, n_images)
    skipped = int(skipped.item())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats = {"train_loss": mean_loss, "images": n_images, "skipped_steps": skipped,
             "seconds": time.perf_counter() - start}
    if with_signal:
        stats["signal_loss"] = float(total_signal.item()) / max(1, n_images)
    return stats


def make_optimizer(params, *, lr: float, weight_decay: float,
                   fused: bool = True) -> torch.optim.Optimizer:
    """AdamW; fused: one kernel per step, which can also skip a step on the device.

    ``fused=False`` is torch's default implementation, the seed notebook's (the two differ in
    rounding, so only that one follows the notebook's trajectory).
    """
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay,
                             fused=True if fused else None)


def skip_on_device_step(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """``optimizer.step()``, a no-op where ``found_inf`` (a 0-dim float tensor) is 1.

    torch's fused optimizers read the flag inside their kernel, as they do under AMP's
    GradScaler; any other optimizer gets the flag checked on the host (one sync per step). The
    param groups say whether it is fused: an optimizer built fused whose state came from a
    non-fused run (``--resume`` of an older run) is not, since ``load_state_dict`` restores the
    saved ``fused`` setting with them.
    """
    if all(group.get("fused") for group in optimizer.param_groups):
        optimizer.found_inf = found_inf
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif not bool(found_inf.item()):
        optimizer.step()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, *, subtract: float, device: torch.device,
                   amp: str, channels_last: bool) -> nn.Module:
    """Re-estimate BatchNorm running statistics of ``model`` (in place) on training batches.

    With few steps or a high LR the running averages lag the weights, and eval-mode outputs
    collapse even when training accuracy is high ("precise BN", Wu & Johnson 2021). A cumulative
    average (momentum None) over a few batches fixes that; EMA weights need it most, since the
    averaged weights never produced the statistics they are given.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x, _ in batches:
        with autocast(device, amp):
            model(model_layout(x - subtract, channels_last))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    return model.eval()


def _unwrap(model: nn.Module) -> nn.Module:
    """The classifier inside DDP, torch.compile and a training-only signal head."""
    model = getattr(model, "module", model)  # DDP
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return model.backbone if isinstance(model, SignalSupervised) else model


@torch.no_grad()
def predict_probs(model: nn.Module, images: torch.Tensor, *, subtract: float,
                  device: torch.device, amp: str, channels_last: bool, batch_size: int = 512,
                  tta: bool = False) -> np.ndarray:
    """Softmax probabilities (N, 3) for a tensor of images, optionally averaged over D4."""
    model.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device).float() - subtract
        views = _d4_views(x) if tta else [x]
        probs = 0
        for v in views:
            v = model_layout(v, channels_last)
            with autocast(device, amp):
                probs = probs + model(v).float().softmax(1)
        out.append((probs / len(views)).cpu())
    return torch.cat(out).double().numpy()


def _d4_views(x: torch.Tensor) -> list[torch.Tensor]:
    views = [x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)]
    if x.shape[-1] == x.shape[-2]:
        views += [v.transpose(-1, -2) for v in views]
    return views


def epoch_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Val metrics over the whole split: loss, accuracy, macro F1, per-class/micro/macro AUC.

    The numbers come from the shared ``darklens.evaluation.metrics.compute_metrics`` (no
    bootstrap), so training and ``darklens evaluate`` report the same quantities.
    """
    from darklens.evaluation.metrics import compute_metrics

    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    picked = probs[np.arange(len(y_true)), y_true]
    m = compute_metrics(y_true, probs, n_bootstrap=0)
    out = {"val_loss": float(-np.mean(np.log(np.clip(picked, 1e-12, None)))),
           "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
    for key in (*CLASSES, "micro", "macro"):
        value = m["auc"][key]
        out[f"auc_{key}"] = float("nan") if value is None else float(value)
    return out


def make_loss(label_smoothing: float) -> Callable:
    """Cross-entropy; with smoothing eps this is (1-eps)*NLL + eps*mean_c(-log p_c), fastai's."""

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)

    return loss_fn
