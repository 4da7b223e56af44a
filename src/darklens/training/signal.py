"""Signal supervision: a training-only head that learns where an image's substructure is.

A class label says whether an image holds substructure, never where. On ``model_a`` the
misses are the faint cases (BENCHMARKS.md, session 10), and a network has to discover from
labels alone which few pixels of an arc carry the evidence. The simulator knows: with
``render(with_signal=True)`` each training image comes with its per-pixel substructure
chi-square. A 1x1 convolution on an intermediate feature map of the backbone learns to predict
``log(1 + chi-square)`` per cell of that map, and its squared error is added to the
classification loss (``--set signal_weight=W``). Only the backbone is saved in checkpoints, so
evaluation, prediction and export are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from darklens.errors import DarklensError


class SignalSupervised(nn.Module):
    """``backbone`` plus a head on its feature stage ``stage``; returns (logits, signal map).

    The backbone must be a timm model with feature stages (``forward_intermediates`` and
    ``feature_info``: ResNets, EfficientNets and most others; measured with ResNets only).
    Stage 2 of a ResNet is ``layer2``: 1/8 of the input's side (19x19 at 150x150), cells of
    ~8 pixels, about the size of a subhalo's imprint.
    """

    def __init__(self, backbone: nn.Module, stage: int = 2, model_name: str = "this model"):
        super().__init__()
        info = getattr(backbone, "feature_info", None)
        if not hasattr(backbone, "forward_intermediates") or not isinstance(info, list):
            raise DarklensError(f"signal_weight: {model_name} has no timm feature stages; "
                                "signal supervision needs a timm model (a ResNet, say)")
        if not 0 <= stage < len(info):
            raise DarklensError(f"signal_stage={stage}: {model_name} has feature stages "
                                f"0-{len(info) - 1}")
        self.backbone = backbone
        self.stage = stage
        self.head = nn.Conv2d(int(info[stage]["num_chs"]), 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        final, (features,) = self.backbone.forward_intermediates(x, indices=[self.stage])
        return self.backbone.forward_head(final), self.head(features)


def signal_target(chi2: torch.Tensor, size) -> torch.Tensor:
    """``log(1 + chi-square per cell)`` of (B, 1, H, W) per-pixel maps on a ``size`` grid.

    A cell's chi-square is its mean per pixel times the pixels per cell, so the cells of an
    image add up to about its whole chi-square whether or not ``size`` divides (H, W).
    """
    h, w = chi2.shape[-2:]
    cells = F.adaptive_avg_pool2d(chi2.float(), size) * (h * w / (size[0] * size[1]))
    return torch.log1p(cells)


def signal_loss(predicted: torch.Tensor, chi2: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the predicted map against :func:`signal_target`."""
    predicted = predicted.float()
    return F.mse_loss(predicted, signal_target(chi2, tuple(predicted.shape[-2:])))
