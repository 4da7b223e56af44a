"""Standard backbones from timm, registered under darklens names (``pretrained=False`` always).

Any other timm model is reachable as ``timm:<name>`` through :func:`create_model`. Weights are
never downloaded: ImageNet RGB weights help little on single-channel lensing images and the
tool must work offline.
"""

from __future__ import annotations

import timm
from torch import nn

from darklens.models.registry import register_model


def _timm(name: str, in_chans: int, num_classes: int, **kwargs) -> nn.Module:
    return timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=num_classes,
                             **kwargs)


@register_model
def resnet18(in_chans: int = 1, num_classes: int = 3, **kwargs) -> nn.Module:
    """timm ResNet-18 (11.2M parameters); the DeepLense baseline (micro AUC 0.994 on Model F)."""
    return _timm("resnet18", in_chans, num_classes, **kwargs)


@register_model
def resnet18_hires(in_chans: int = 1, num_classes: int = 3, **kwargs) -> nn.Module:
    """timm ResNet-18 without the stem's max-pool: its first stage sees 75x75, not 38x38.

    A subhalo of model_a deflects light by less than a pixel and the PSF is ~2 pixels wide, so
    the ImageNet stem's 4x downsampling before any residual block discards the scale the
    signal lives at. Same 11.2M parameters as resnet18, ~3.8x its FLOPs (6.4 vs 1.7 GFLOP at
    150x150). Measured on model_a it did not pay (BENCHMARKS.md, session 7): no clear gain over
    resnet18 per image seen, and at batch 1024 it trains at half its rate.
    """
    model = _timm("resnet18", in_chans, num_classes, **kwargs)
    model.maxpool = nn.Identity()
    return model


@register_model
def resnet18_slim(in_chans: int = 1, num_classes: int = 3, **kwargs) -> nn.Module:
    """timm ResNet-18 with its last stage at 256 channels, not 512 (5.2M parameters).

    Shipped weights must fit in 20 MB (issue 5). resnet18's do not, even as float16 (22.4 MB);
    this model's do (10.4 MB). Three quarters of resnet18's parameters sit in that last stage,
    which works on 5x5 maps; halving it keeps every earlier layer as it is, and 82% of the
    FLOPs (1.4 vs 1.7 GFLOP forward at 150x150). On model_a it scored as resnet18 did
    (BENCHMARKS.md, session 11).
    """
    kwargs.setdefault("channels", (64, 128, 256, 256))
    return _timm("resnet18", in_chans, num_classes, **kwargs)


@register_model
def resnet50(in_chans: int = 1, num_classes: int = 3, **kwargs) -> nn.Module:
    """timm ResNet-50 (23.5M parameters)."""
    return _timm("resnet50", in_chans, num_classes, **kwargs)


@register_model
def efficientnet_b0(in_chans: int = 1, num_classes: int = 3, **kwargs) -> nn.Module:
    """timm EfficientNet-B0 (4.0M parameters)."""
    return _timm("efficientnet_b0", in_chans, num_classes, **kwargs)


@register_model
def efficientnet_b5(in_chans: int = 1, num_classes: int = 3, **kwargs) -> nn.Module:
    """timm EfficientNet-B5 (28M parameters); the Common Test EfficientNet entry used B5."""
    return _timm("efficientnet_b5", in_chans, num_classes, **kwargs)


@register_model
def resnet_tiny(in_chans: int = 1, num_classes: int = 3, **kwargs) -> nn.Module:
    """A resnet10t-shaped network (deep stem, avg-down, one BasicBlock per stage) at 1/4 width.

    About 0.18M parameters: fast enough on a CPU for tests and the demo.
    """
    from timm.models.resnet import BasicBlock, ResNet

    cfg = dict(block=BasicBlock, layers=(1, 1, 1, 1), channels=(16, 32, 48, 96), stem_width=16,
               stem_type="deep_tiered", avg_down=True)
    cfg.update(kwargs)
    return ResNet(in_chans=in_chans, num_classes=num_classes, **cfg)


@register_model
def efficientnet_tiny(in_chans: int = 1, num_classes: int = 3, **kwargs) -> nn.Module:
    """timm's ``test_efficientnet`` (five one-block stages, about 0.1M parameters)."""
    return _timm("test_efficientnet", in_chans, num_classes, **kwargs)
