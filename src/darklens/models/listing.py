"""``darklens models``: a table of registered models and shipped pretrained checkpoints."""

from __future__ import annotations

import fnmatch
import warnings

from darklens.models.registry import create_model, list_models


def count_parameters(name: str) -> int:
    """Trainable parameters of ``create_model(name)`` (1 input channel, 3 classes).

    Parameter counts of these models do not depend on the image size, so this is also the
    count for 1x150x150 inputs.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e2cnn's deprecation chatter while building bases
        model = create_model(name)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _format_metrics(metrics: dict) -> str:
    parts = []
    for key, value in metrics.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4f}")
        elif isinstance(value, (int, str)):
            parts.append(f"{key}={value}")
    return " ".join(parts) or "-"


def print_models(pattern: str = "*") -> None:
    """Print registered models matching ``pattern`` (fnmatch) with parameter counts, then the
    shipped pretrained checkpoints (``pretrained:<name>``) with their recorded metrics."""
    from darklens.checkpoint import list_pretrained

    from tqdm import tqdm

    names = list_models(pattern)
    width = max([len(n) for n in names] + [5])
    # Building every model takes seconds (e2cnn computes its kernel bases): show progress.
    counts = {n: count_parameters(n) for n in tqdm(names, desc="counting parameters", leave=False)}
    print(f"{'model':<{width}}  {'params':>12}")
    for name in names:
        print(f"{name:<{width}}  {counts[name]:>12,}")
    if not names:
        print(f"(no registered model matches {pattern!r}; any timm model works as timm:<name>)")

    shipped = [p for p in list_pretrained()
               if fnmatch.fnmatchcase(p["name"], pattern)
               or fnmatch.fnmatchcase(str(p["model"]), pattern)]
    print()
    if not shipped:
        print("pretrained: none shipped" + ("" if pattern == "*" else f" matching {pattern!r}"))
        return
    pwidth = max(len("pretrained:" + p["name"]) for p in shipped)
    print(f"{'pretrained':<{pwidth}}  {'model':<{width}}  metrics")
    for p in shipped:
        print(f"{'pretrained:' + p['name']:<{pwidth}}  {str(p['model']):<{width}}  "
              f"{_format_metrics(p['metrics'])}")
