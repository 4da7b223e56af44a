"""Rotation-equivariant steerable CNNs on e2cnn (C8 / D4), with a group-pooled invariant head.

As in the DeepLense equivariant work (e2cnn C8 reached micro AUC 0.998 on Model F): each layer is
an ``R2Conv`` between regular-representation fields, so rotating the input permutes the group
channels of every feature map instead of changing them. Max-pooling over each field's group
channels then gives rotation-invariant features, averaged over space and classified by an MLP.

Exact invariance under 90-degree rotations (and D4 flips) needs every spatial step to commute
with rotation about the image centre: odd kernels with symmetric padding do, and
:class:`SymmetricMaxPool` picks a window that keeps the downsampling grid symmetric for both
even and odd sizes. C8's 45-degree elements are only approximate on a square grid.

:func:`export_plain` turns a trained model into plain torch layers (Conv2d, BatchNorm2d, ReLU)
for inference and ONNX export, with identical outputs.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from darklens.errors import DarklensError
from darklens.models.registry import register_model


def _as_hashable(value):
    return value.tobytes() if isinstance(value, np.ndarray) else value


def _solution_hash(self) -> int:
    return (hash(self.in_irrep) + hash(self.out_irrep) + hash(_as_hashable(self.mu))
            + hash(_as_hashable(self.gamma)))


class _NumpyCopyFalseShim:
    """numpy, except ``array(x, copy=False)`` means "copy only if needed" as it did in NumPy 1."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def array(obj, *args, copy=True, **kwargs):
        if copy is False:
            return np.asarray(obj, *args, **kwargs)
        return np.array(obj, *args, copy=copy, **kwargs)


def _patch_e2cnn_for_numpy2() -> None:
    """Make e2cnn 0.2.3 (unmaintained) work under NumPy 2 for the flip groups (D_N).

    It hashes kernel-basis solutions with ``ndarray.tostring()`` (removed: we swap in the same
    hash built on ``tobytes()``) and samples them with ``np.array(x, copy=False)`` (now an error
    when a copy is needed: its module sees a numpy whose ``copy=False`` means ``asarray``).
    """
    from e2cnn.kernels import irreps_basis
    from e2cnn.kernels import utils as kernel_utils

    if hasattr(np.ndarray, "tostring"):
        return
    kernel_utils.np = _NumpyCopyFalseShim()
    for name in ("R2FlipsSolution", "R2ContinuousRotationsSolution",
                 "R2FlipsDiscreteRotationsSolution", "R2FlipsContinuousRotationsSolution"):
        cls = getattr(irreps_basis, name, None)
        if cls is not None:
            cls.__hash__ = _solution_hash


def symmetric_max_pool(x: torch.Tensor) -> torch.Tensor:
    """Halve H and W with a pooling grid that is mirror-symmetric in each axis.

    Even size: 2x2 windows, stride 2 (window k mirrors window n/2-1-k). Odd size: 3x3 windows,
    stride 2, padding 1, centred on pixels 0, 2, ..., n-1 (a symmetric set). A plain 2x2 pool on
    an odd size would drop the last row and column and break rotation symmetry.
    """
    height, width = x.shape[-2:]
    kernel = (2 if height % 2 == 0 else 3, 2 if width % 2 == 0 else 3)
    padding = (kernel[0] // 2 if height % 2 else 0, kernel[1] // 2 if width % 2 else 0)
    return F.max_pool2d(x, kernel_size=kernel, stride=2, padding=padding)


class SymmetricMaxPool(nn.Module):
    """Module form of :func:`symmetric_max_pool` (pointwise, so it is equivariant on any field)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return symmetric_max_pool(x)


class GroupMaxPool(nn.Module):
    """Max over the ``group_size`` consecutive channels of each regular field: (B, F*G, H, W) ->
    (B, F, H, W). The plain-torch equivalent of ``e2cnn.nn.GroupPooling`` on regular fields."""

    def __init__(self, group_size: int):
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.reshape(b, c // self.group_size, self.group_size, h, w).amax(dim=2)


def _head(fields: int, hidden: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(fields, hidden),
        nn.BatchNorm1d(hidden),
        nn.ELU(),
        nn.Linear(hidden, num_classes),
    )


class SteerableCNN(nn.Module):
    """Equivariant stages (R2Conv - InnerBatchNorm - ReLU, then a symmetric 2x max pool after all
    but the last), group max pooling, global average pooling, MLP head.

    Args:
        in_chans: input channels (each a scalar field).
        num_classes: output logits.
        group: ``"c8"`` (8 rotations) or ``"d4"`` (4 rotations and flips); any ``"cN"``/``"dN"``.
        widths: regular fields per stage (each field has |G| channels).
        stem_kernel: kernel of the first convolution (large: the stem sees raw arcs).
        kernel_size: kernel of the later convolutions (odd).
        head_hidden: hidden width of the classifier MLP.
    """

    def __init__(
        self,
        in_chans: int = 1,
        num_classes: int = 3,
        group: str = "c8",
        widths: tuple[int, ...] | list[int] = (6, 12, 24, 48),
        stem_kernel: int = 7,
        kernel_size: int = 5,
        head_hidden: int = 64,
    ):
        super().__init__()
        from e2cnn import gspaces
        from e2cnn import nn as enn

        _patch_e2cnn_for_numpy2()
        kind, order = str(group)[:1].lower(), str(group)[1:]
        if kind not in ("c", "d") or not order.isdigit() or int(order) < 1:
            raise DarklensError(f"e2cnn group must be cN or dN (e.g. c8, d4), got {group!r}")
        if kind == "c":
            gspace = gspaces.Rot2dOnR2(N=int(order))
        else:
            gspace = gspaces.FlipRot2dOnR2(N=int(order))
        self.group = group
        self.group_size = gspace.fibergroup.order()
        self.input_type = enn.FieldType(gspace, in_chans * [gspace.trivial_repr])

        stages = []
        in_type = self.input_type
        for i, fields in enumerate(widths):
            out_type = enn.FieldType(gspace, fields * [gspace.regular_repr])
            kernel = stem_kernel if i == 0 else kernel_size
            with warnings.catch_warnings():  # e2cnn's uint8-mask deprecation, not ours to fix
                warnings.filterwarnings("ignore", message="indexing with dtype torch.uint8")
                conv = enn.R2Conv(in_type, out_type, kernel_size=kernel, padding=kernel // 2,
                                  bias=False)
            stages.append(enn.SequentialModule(
                conv,
                enn.InnerBatchNorm(out_type),
                enn.ReLU(out_type, inplace=True),
            ))
            in_type = out_type
        self.stages = nn.ModuleList(stages)
        self.group_pool = GroupMaxPool(self.group_size)
        self.head = _head(widths[-1], head_hidden, num_classes)
        self._mark_derived_buffers()

    # e2cnn's R2Conv caches its expanded filter as a buffer in eval mode and deletes it in train
    # mode, so its state_dict keys change with the mode and a checkpoint saved in one mode does
    # not load strictly in the other. The cache is derived from the weights: keep it out of
    # state_dict (non-persistent), rebuild it after loading, and build it without autograd
    # history so the model can be deep-copied (EMA, BN recalibration) in eval mode.
    _DERIVED_BUFFERS = ("filter", "expanded_bias")

    def _r2convs(self):
        from e2cnn.nn import R2Conv

        return [m for m in self.modules() if isinstance(m, R2Conv)]

    def _mark_derived_buffers(self) -> None:
        for conv in self._r2convs():
            conv._non_persistent_buffers_set.update(self._DERIVED_BUFFERS)

    def train(self, mode: bool = True) -> SteerableCNN:
        with torch.no_grad():
            super().train(mode)
        self._mark_derived_buffers()
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # Tolerate checkpoints that still carry the derived buffers.
        state_dict = {k: v for k, v in state_dict.items()
                      if k.rsplit(".", 1)[-1] not in self._DERIVED_BUFFERS}
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        if not self.training:  # the cached eval-mode filters were built from the old weights
            self.train(True)
            self.train(False)
        return result

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from e2cnn.nn import GeometricTensor

        field = GeometricTensor(x, self.input_type)
        for i, stage in enumerate(self.stages):
            field = stage(field)
            if i < len(self.stages) - 1:  # pointwise pooling keeps the field type
                field = GeometricTensor(symmetric_max_pool(field.tensor), field.type)
        invariant = self.group_pool(field.tensor)
        return self.head(invariant.mean(dim=(2, 3)))


class PlainSteerableCNN(nn.Module):
    """The exported form of :class:`SteerableCNN`: plain torch layers, same outputs."""

    def __init__(self, stages: list[nn.Module], group_size: int, head: nn.Module):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.pool = SymmetricMaxPool()
        self.group_pool = GroupMaxPool(group_size)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.stages) - 1:
                x = self.pool(x)
        return self.head(self.group_pool(x).mean(dim=(2, 3)))


def export_plain(model: nn.Module) -> nn.Module:
    """A plain-torch copy of ``model`` for inference / ONNX, in eval mode; ``model`` is untouched.

    :class:`SteerableCNN` becomes :class:`PlainSteerableCNN` (each ``R2Conv`` expanded once into
    an ``nn.Conv2d``, ``InnerBatchNorm`` into ``nn.BatchNorm2d``). Any other model is returned as
    an eval-mode deep copy, so callers can export every registered model the same way.
    """
    if not isinstance(model, SteerableCNN):
        return copy.deepcopy(model).eval()
    # No deepcopy here: an eval-mode R2Conv caches its expanded filter as a non-leaf tensor,
    # which deepcopy refuses. export() copies the weights into new layers but switches the
    # source to eval mode, so the caller's mode is restored afterwards.
    was_training = model.training
    with torch.no_grad():
        stages = [stage.export() for stage in model.stages]
    model.train(was_training)
    return PlainSteerableCNN(stages, model.group_size, copy.deepcopy(model.head)).eval()


@register_model
def e2cnn_c8(in_chans: int = 1, num_classes: int = 3, **kwargs) -> SteerableCNN:
    """C8 steerable CNN (8 rotations), as in the DeepLense equivariant results."""
    return SteerableCNN(in_chans, num_classes, **{"group": "c8", **kwargs})


@register_model
def e2cnn_d4(in_chans: int = 1, num_classes: int = 3, **kwargs) -> SteerableCNN:
    """D4 steerable CNN (4 rotations and the flips): exact symmetries of the pixel grid."""
    return SteerableCNN(in_chans, num_classes, **{"group": "d4", **kwargs})


@register_model
def e2cnn_tiny(in_chans: int = 1, num_classes: int = 3, **kwargs) -> SteerableCNN:
    """A small C8 steerable CNN for tests and CPU demos."""
    cfg = {"group": "c8", "widths": (2, 4, 4), "stem_kernel": 5, "kernel_size": 3,
           "head_hidden": 16, **kwargs}
    return SteerableCNN(in_chans, num_classes, **cfg)
