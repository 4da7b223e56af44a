"""A timm-style model registry: ``register_model``, ``create_model``, ``list_models``.

Builders are plain functions ``fn(in_chans=1, num_classes=3, **kwargs) -> nn.Module``. Names
starting with ``timm:`` are passed through to :func:`timm.create_model` (as torchgeo does), always
with ``pretrained=False``: darklens never downloads weights behind the user's back.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable

from torch import nn

from darklens.errors import DarklensError

ModelBuilder = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelBuilder] = {}

TIMM_PREFIX = "timm:"


def register_model(fn: ModelBuilder) -> ModelBuilder:
    """Register ``fn`` under its function name; a duplicate name is an error.

    Raising on duplicates (as torchvision's ``_api.py`` does) catches two modules silently
    shadowing each other's model.
    """
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered (by {_REGISTRY[name].__module__})")
    _REGISTRY[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registered model names matching the shell-style ``pattern`` (fnmatch)."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def is_model(name: str) -> bool:
    """True when ``name`` is registered or is a ``timm:<name>`` pass-through timm knows."""
    if name in _REGISTRY:
        return True
    if name.startswith(TIMM_PREFIX):
        import timm

        return timm.is_model(name[len(TIMM_PREFIX):])
    return False


def check_model_name(name: str) -> None:
    """Raise the one-line unknown-model error (with close matches) unless ``name`` names a model.

    Cheap (no model is built), so callers can refuse a typo before reading any data.
    """
    if name.startswith(TIMM_PREFIX):
        import timm

        timm_name = name[len(TIMM_PREFIX):]
        if not timm.is_model(timm_name):
            close = difflib.get_close_matches(timm_name, timm.list_models(), n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
            raise DarklensError(f"unknown timm model {timm_name!r}{hint}")
    elif name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise DarklensError(
            f"unknown model {name!r}{hint} (see `darklens models`, or use timm:<name>)"
        )


def create_model(name: str, in_chans: int = 1, num_classes: int = 3, **kwargs) -> nn.Module:
    """Build a registered model (or ``timm:<name>``) with random weights.

    Args:
        name: a name from :func:`list_models`, or ``timm:<timm model name>``.
        in_chans: input channels (1 for the lensing images).
        num_classes: output logits per image.
        **kwargs: builder-specific options (e.g. ``seed_exact=True`` for ``densenet_cbam``).

    Returns:
        A plain ``nn.Module`` mapping (B, in_chans, H, W) to logits (B, num_classes).

    Raises:
        DarklensError: unknown name (the message lists close matches) or bad kwargs.
    """
    check_model_name(name)
    if name.startswith(TIMM_PREFIX):
        return _create_timm(name[len(TIMM_PREFIX):], in_chans, num_classes, **kwargs)
    builder = _REGISTRY[name]
    try:
        return builder(in_chans=in_chans, num_classes=num_classes, **kwargs)
    except TypeError as e:
        if "keyword argument" not in str(e):
            raise  # a bug inside the builder, not the user's options
        raise DarklensError(f"model {name!r}: {e}") from None  # e.g. a typo in --set model.x


def _create_timm(timm_name: str, in_chans: int, num_classes: int, **kwargs) -> nn.Module:
    import timm

    if kwargs.pop("pretrained", False):
        raise DarklensError(f"timm:{timm_name}: pretrained weights are not downloaded by darklens")
    try:
        return timm.create_model(
            timm_name, pretrained=False, in_chans=in_chans, num_classes=num_classes, **kwargs
        )
    except TypeError as e:
        if "keyword argument" not in str(e):
            raise
        raise DarklensError(f"model timm:{timm_name}: {e}") from None
