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
    from tqdm import tqdm

    from darklens.checkpoint import list_pretrained

    names = list_models(pattern)
    width = max([len(n) for n in names] + [5])
    # Building every model takes seconds (e2cnn computes its kernel bases): show progress.
    counts = {n: count_parameters(n)  # disable=None: no bar without a terminal
              for n in tqdm(names, desc="counting parameters", leave=False, disable=None)}
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
    print(format_pretrained(shipped))


def _num(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"


def _test_columns(metrics: dict) -> tuple[str, str, str]:
    """(accuracy with its 95% CI, macro AUC, test set) of a packaged model's recorded metrics."""
    ci = (metrics.get("ci95") or {}).get("accuracy")
    accuracy = _num(metrics.get("accuracy"))
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        accuracy += f" [{_num(ci[0])}, {_num(ci[1])}]"
    per_class = metrics.get("n_per_class") or {}
    size = f"{metrics.get('n', '?')} images"
    if per_class:
        size = "+".join(str(v) for v in per_class.values()) + " images"
    test_set = (f"{metrics.get('preset', '?')} {metrics.get('split', 'test')} "
                f"seed {metrics.get('dataset_seed', '?')}, {size}")
    return accuracy, _num(metrics.get("auc_macro")), test_set


def format_pretrained(shipped: list[dict]) -> str:
    """The table of shipped models: name, architecture, recorded test accuracy (95% bootstrap
    CI) and macro AUC, the test set they come from, then the description.

    Checkpoints without packaged test metrics (no ``accuracy``) list whatever numbers they hold.
    """
    rows = []
    for p in shipped:
        metrics = p.get("metrics") or {}
        if "accuracy" in metrics:
            accuracy, auc, test_set = _test_columns(metrics)
        else:
            accuracy, auc, test_set = "-", "-", _format_metrics(metrics)
        rows.append(("pretrained:" + p["name"], str(p["model"]), accuracy, auc, test_set,
                     p.get("description") or ""))
    header = ("pretrained", "model", "test accuracy [95% CI]", "AUC macro", "recorded on")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  " + header[4]]
    for row in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)) + "  " + row[4])
        if row[5]:
            lines.append("    " + row[5])
    return "\n".join(line.rstrip() for line in lines)
