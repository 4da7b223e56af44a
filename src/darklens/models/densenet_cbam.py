"""The seed notebook's DenseNet + CBAM classifier (450,075 parameters at the default widths).

Layers follow the notebook cell for cell. Attribute names (``conv1``, ``dense_block1``,
``a_b1``, ``tras1``, ``neck`` ...) are kept identical to the notebook so a ``state_dict`` saved by
the notebook loads here unchanged.

One defect is fixed by default: the notebook's spatial attention fed ``AdaptiveMaxPool3d`` to both
its "max" and its "avg" input, so the 7x7 conv saw the channel max twice. We use the channel mean
for the avg input as in CBAM (arXiv 1807.06521); ``seed_exact=True`` restores the notebook's
behaviour (e.g. to run the notebook's weights as they were trained).
"""

from __future__ import annotations

import torch
from torch import nn

from darklens.models.registry import register_model


def _row_sums(t: torch.Tensor) -> torch.Tensor:
    """Partial sums of ``t`` over rows of contiguous memory, many rows: the scalar sum's first
    pass. Split this way, inductor reduces the batch's few hundred million values with one
    program per row (tens of thousands in flight) instead of a few hundred long ones."""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        n, c, h, w = t.shape
        return t.permute(0, 2, 3, 1).reshape(n * h, w * c).sum(1)
    if t.dim() >= 3 and t.is_contiguous():
        return t.reshape(t.shape[0] * t.shape[1], -1).sum(1)
    return t.sum().reshape(1)


class _ScalarPReLUFn(torch.autograd.Function):
    """PReLU with one shared weight, its weight gradient reduced in two passes (``_row_sums``).

    Inductor fused the weight-gradient sum of each ``nn.PReLU`` into one kernel that read the
    whole batch with a few hundred programs: ~10 of the ~53 ms of a compiled bf16 step at batch
    256 (H100, benchmarks/results/train_step_profile_h100.txt). Forward and input gradient are
    nn.PReLU's; the weight gradient is summed in fp32 (nn.PReLU under bf16 autocast sums in bf16).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return torch.where(x > 0, x, x * weight.to(x.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        positive = x > 0
        grad_x = torch.where(positive, grad, grad * weight.to(grad.dtype))
        grad_w = torch.where(positive, torch.zeros_like(grad), grad * x).float()
        return grad_x, _row_sums(grad_w).sum().reshape(weight.shape).to(weight.dtype)


class PReLU(nn.PReLU):
    """``nn.PReLU`` (same parameter, same outputs); compiled, it takes ``_ScalarPReLUFn``.

    Eager runs keep torch's own kernels, so the seed recipe stays the notebook's arithmetic.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_parameters == 1 and torch.compiler.is_compiling():
            kind = x.device.type
            if torch.is_autocast_enabled(kind):  # prelu runs in the autocast dtype, as F.prelu
                x = x.to(torch.get_autocast_dtype(kind))
            return _ScalarPReLUFn.apply(x, self.weight)
        return super().forward(x)


class DenseLayer(nn.Module):
    """BN-PReLU-conv1x1(pad 1)-BN-PReLU-conv3x3: keeps H, W; doubles the channels."""

    def __init__(self, chans: int):
        super().__init__()
        # The 1x1 conv pads by 1 and the 3x3 conv pads by 0: the notebook's way to keep H, W.
        self.net = nn.Sequential(
            nn.BatchNorm2d(chans),
            PReLU(),
            nn.Conv2d(chans, chans, kernel_size=1, padding=1, bias=False),
            nn.BatchNorm2d(chans),
            PReLU(),
            nn.Conv2d(chans, chans * 2, kernel_size=3, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DenseBlock(nn.Module):
    """Two dense layers; the second sees [first output, input]. Output has 6x the channels."""

    def __init__(self, chans: int):
        super().__init__()
        self.d1 = DenseLayer(chans)
        self.d2 = DenseLayer(chans + chans * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.d2(torch.cat([self.d1(x), x], dim=1))


class ChannelAttention(nn.Module):
    """CBAM channel attention: shared MLP on global max and avg pools -> sigmoid gate (B,C,1,1)."""

    def __init__(self, chans: int, hidden: int = 64):
        super().__init__()
        self.n = chans
        self.maxpool = nn.AdaptiveMaxPool2d(1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.MLP = nn.Sequential(  # noqa: N815 (notebook name, kept for state_dict keys)
            nn.Linear(chans, hidden, bias=False),
            PReLU(),
            nn.Linear(hidden, chans, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_max = self.MLP(self.maxpool(x).flatten(1))
        x_avg = self.MLP(self.avgpool(x).flatten(1))
        return torch.sigmoid(x_max + x_avg).view(x.shape[0], self.n, 1, 1)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: 7x7 conv over [channel max, channel mean] -> sigmoid gate (B,1,H,W).

    Args:
        seed_exact: use the channel max for the "avg" input too, as the notebook did.
    """

    def __init__(self, seed_exact: bool = False):
        super().__init__()
        self.seed_exact = seed_exact
        self.conv = nn.Conv2d(2, 1, 7, padding=7 // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # max with indices, not amax: its backward sends the gradient to one arg-max, as the
        # notebook's AdaptiveMaxPool3d does. amax's backward splits it over ties by comparing
        # values, which inductor gets wrong in bf16/fp16 (pytorch/pytorch#186799; our compiled
        # bf16 densenet_cbam had non-finite gradients, benchmarks/compile_probe.py).
        x_max = torch.max(x, dim=1, keepdim=True).values
        x_avg = x_max if self.seed_exact else torch.mean(x, dim=1, keepdim=True)
        return torch.sigmoid(self.conv(torch.cat([x_max, x_avg], dim=1)))


class AttentionBlock(nn.Module):
    """CBAM: channel gate, then spatial gate on the channel-gated features."""

    def __init__(self, chans: int, hidden: int = 64, seed_exact: bool = False):
        super().__init__()
        self.c_a = ChannelAttention(chans, hidden)
        self.s_a = SpatialAttention(seed_exact)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gated = self.c_a(x) * x
        return self.s_a(gated) * gated


class TransitionLayer(nn.Module):
    """DenseNet transition: BN-PReLU, conv1x1 to ``c_out`` channels and 2x2 average pooling.

    Args:
        pool_first: pool before the conv. A bias-free 1x1 conv and an average pool are both
            linear, one over channels and one over pixels, so they commute: same function, same
            parameters, up to float rounding. Pooling first gives the conv a quarter of the
            pixels and never writes its widest output (``tras2``: 360 channels at 74x74,
            25% of the notebook network's FLOPs). False keeps the notebook's order, for the
            notebook pipeline baseline (benchmarks/notebook_pipeline.py).
    """

    def __init__(self, c_in: int, c_out: int, pool_first: bool = True):
        super().__init__()
        self.pool_first = pool_first
        self.transition = nn.Sequential(  # the notebook's order; indices are state_dict keys
            nn.BatchNorm2d(c_in),
            PReLU(),
            nn.Conv2d(c_in, c_out, kernel_size=1, stride=1, bias=False),
            nn.AvgPool2d(kernel_size=2, stride=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pool_first:
            return self.transition(x)
        norm, act, conv, pool = self.transition
        return conv(pool(act(norm(x))))


class DenseNetCBAM(nn.Module):
    """Stem conv, two (dense block, CBAM, transition) stages, global pool, MLP neck.

    Args:
        in_chans: input channels.
        num_classes: output logits.
        stem_chans: channels after the 3x3 stem (notebook: 4).
        mid_chans: channels after the first transition (notebook: 32).
        out_chans: channels after the second transition, also the neck width (notebook: 360).
        neck_chans: width of the neck's second linear layer (notebook: 64).
        attention_hidden: hidden width of the channel-attention MLP (notebook: 64).
        seed_exact: reproduce the notebook's spatial-attention defect (max used as avg).
        pool_first: transitions pool before their 1x1 conv (same function up to float
            rounding, fewer FLOPs; see ``TransitionLayer``). Default: on, except with
            ``seed_exact``, which keeps the notebook's arithmetic unless this is set.
    """

    def __init__(
        self,
        in_chans: int = 1,
        num_classes: int = 3,
        stem_chans: int = 4,
        mid_chans: int = 32,
        out_chans: int = 360,
        neck_chans: int = 64,
        attention_hidden: int = 64,
        seed_exact: bool = False,
        pool_first: bool | None = None,
    ):
        super().__init__()
        pool_first = not seed_exact if pool_first is None else pool_first
        self.conv1 = nn.Conv2d(in_chans, stem_chans, kernel_size=3)
        # A dense block maps c channels to 2 * (c + 2c) = 6c channels.
        self.dense_block1 = DenseBlock(stem_chans)
        self.a_b1 = AttentionBlock(6 * stem_chans, attention_hidden, seed_exact)
        self.tras1 = TransitionLayer(6 * stem_chans, mid_chans, pool_first)
        self.dense_block2 = DenseBlock(mid_chans)
        self.a_b2 = AttentionBlock(6 * mid_chans, attention_hidden, seed_exact)
        self.tras2 = TransitionLayer(6 * mid_chans, out_chans, pool_first)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.neck = nn.Sequential(
            nn.Linear(out_chans, out_chans, bias=False),
            nn.ReLU(),
            nn.BatchNorm1d(out_chans),
            nn.Linear(out_chans, neck_chans, bias=False),
            nn.BatchNorm1d(neck_chans),
            nn.Linear(neck_chans, num_classes),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> pooled features (B, out_chans)."""
        x = self.conv1(x)
        x = self.tras1(self.a_b1(self.dense_block1(x)))
        x = self.tras2(self.a_b2(self.dense_block2(x)))
        return self.pool(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.forward_features(x))


@register_model
def densenet_cbam(in_chans: int = 1, num_classes: int = 3, **kwargs) -> DenseNetCBAM:
    """The seed notebook's network (450,075 parameters); spatial attention fixed by default."""
    return DenseNetCBAM(in_chans, num_classes, **kwargs)


@register_model
def densenet_cbam_tiny(in_chans: int = 1, num_classes: int = 3, **kwargs) -> DenseNetCBAM:
    """Same family at a fraction of the width: for tests and CPU demos."""
    cfg = dict(stem_chans=2, mid_chans=8, out_chans=32, neck_chans=16, attention_hidden=8)
    cfg.update(kwargs)
    return DenseNetCBAM(in_chans, num_classes, **cfg)
