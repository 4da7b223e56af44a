"""Models: a timm-style registry of classifiers mapping (B, C, H, W) to logits (B, num_classes).

Importing this package registers every built-in family.
"""

from darklens.models.registry import (
    check_model_name,
    create_model,
    is_model,
    list_models,
    register_model,
)

# Imported for their @register_model side effects.
from darklens.models import densenet_cbam as _densenet_cbam  # noqa: E402, F401, I001
from darklens.models import timm_backbones as _timm_backbones  # noqa: E402, F401, I001
from darklens.models.e2cnn_steerable import export_plain  # noqa: E402, I001

__all__ = [
    "check_model_name", "create_model", "export_plain", "is_model", "list_models",
    "register_model",
]
