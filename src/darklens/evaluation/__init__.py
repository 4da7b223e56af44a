"""Evaluation: metrics (checked against scikit-learn), inference with D4 TTA, plots, reports,
batch prediction to CSV and ONNX export.

Module names differ from the function names re-exported here (``prediction`` holds ``predict``):
importing a submodule sets a package attribute of its name, which would shadow the function.
The heavy entry points import their dependencies lazily so training can import
:func:`compute_metrics` without pulling in matplotlib.
"""

from __future__ import annotations

from darklens.evaluation.metrics import compute_metrics

__all__ = ["compute_metrics", "evaluate", "export_onnx", "predict", "predict_proba"]


def predict_proba(model, meta, images, batch_size=256, device="cpu", tta=False, progress=True):
    """Class probabilities (N, 3); see :func:`darklens.evaluation.inference.predict_proba`."""
    from darklens.evaluation.inference import predict_proba as _predict_proba

    return _predict_proba(model, meta, images, batch_size=batch_size, device=device, tta=tta,
                          progress=progress)


def evaluate(model, data, *, split="test", out, tta=False, allow_pickle=False, device="auto"):
    """Write report.json, report.md and plots; see :func:`darklens.evaluation.report.evaluate`."""
    from darklens.evaluation.report import evaluate as _evaluate

    return _evaluate(model, data, split=split, out=out, tta=tta, allow_pickle=allow_pickle,
                     device=device)


def predict(model, inputs, *, out, skip_bad=False, tta=False, allow_pickle=False, device="auto"):
    """Write a predictions CSV; see :func:`darklens.evaluation.prediction.predict`."""
    from darklens.evaluation.prediction import predict as _predict

    return _predict(model, inputs, out=out, skip_bad=skip_bad, tta=tta,
                    allow_pickle=allow_pickle, device=device)


def export_onnx(model, onnx_path):
    """Export to ONNX; see :func:`darklens.evaluation.export.export_onnx`."""
    from darklens.evaluation.export import export_onnx as _export_onnx

    return _export_onnx(model, onnx_path)
