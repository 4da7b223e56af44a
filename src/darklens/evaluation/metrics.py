"""Scores for a 3-class lens classifier: accuracy, macro F1, ROC AUCs, calibration, bootstrap CIs.

Pure numpy/scipy so training can call :func:`compute_metrics` every epoch (``n_bootstrap=0``).
The AUC here is the Mann-Whitney statistic from average ranks, which equals the trapezoidal area
under the ROC curve with tied scores counted as one half (scikit-learn's ``roc_auc_score``); the
tests check every number against scikit-learn called directly.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.stats import rankdata

from darklens import CLASSES

#: Number of equal-width confidence bins of the expected calibration error (Guo et al. 2017).
ECE_BINS = 15


def binary_auc(is_positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for a binary target.

    Args:
        is_positive: (N,) or (B, N) booleans; rows are independent problems.
        scores: same shape, higher means "more positive".

    Returns:
        The AUC (a float, or an array for 2-D input with NaN where undefined), or ``None`` for 1-D
        input when only one of the two classes is present (the AUC is undefined there).
    """
    pos = np.asarray(is_positive, dtype=bool)
    ranks = rankdata(scores, axis=-1)  # average ranks: ties count one half
    n_pos = pos.sum(axis=-1)
    n_neg = pos.shape[-1] - n_pos
    rank_sum = np.where(pos, ranks, 0.0).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    if pos.ndim == 1:
        return None if n_pos == 0 or n_neg == 0 else float(auc)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def expected_calibration_error(
    y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """Top-label expected calibration error with ``n_bins`` equal-width bins.

    ECE = sum_b (n_b / N) * |accuracy_b - mean confidence_b|, where the confidence is the largest
    probability and bin b holds confidences in (b/n_bins, (b+1)/n_bins] (Guo et al. 2017, eq. 3).
    """
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    # ceil(c * n_bins) - 1 puts c in (lo, hi]; clip keeps c == 0 in the first bin.
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    conf_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(bins, weights=correct.astype(np.float64), minlength=n_bins)
    return float(np.abs(correct_sum - conf_sum).sum() / len(y_true))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = len(CLASSES)) -> float:
    """Unweighted mean F1 over the classes that occur in ``y_true`` or ``y_pred``.

    A class seen in neither has no defined F1 and is left out (scikit-learn's default ``labels``);
    a class seen in only one of them scores 0.
    """
    scores = []
    for k in range(num_classes):
        tp = np.sum((y_pred == k) & (y_true == k))
        n_true, n_pred = np.sum(y_true == k), np.sum(y_pred == k)
        if n_true + n_pred == 0:
            continue
        scores.append(2.0 * tp / (n_true + n_pred))
    return float(np.mean(scores))


def _check(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).astype(np.int64).ravel()
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(CLASSES):
        raise ValueError(f"probs must be (N, {len(CLASSES)}), got {probs.shape}")
    if len(y_true) != len(probs) or len(y_true) == 0:
        raise ValueError(
            f"need as many labels as rows of probs (>0), got {len(y_true)}, {len(probs)}"
        )
    if y_true.min() < 0 or y_true.max() >= len(CLASSES):
        raise ValueError(f"labels must lie in 0..{len(CLASSES) - 1}")
    if not np.isfinite(probs).all():
        raise ValueError("probs contain NaN or infinity")
    return y_true, probs


def _aucs(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    one_hot = y_true[:, None] == np.arange(len(CLASSES))[None, :]
    per_class = {name: binary_auc(one_hot[:, k], probs[:, k]) for k, name in enumerate(CLASSES)}
    defined = [v for v in per_class.values() if v is not None]
    return {
        **per_class,
        # micro: one ROC over all (image, class) pairs of the flattened one-hot labels
        "micro": binary_auc(one_hot.ravel(), probs.ravel()),
        # macro over the classes whose AUC is defined (a class absent from y_true has none)
        "macro": float(np.mean(defined)) if defined else None,
    }


def resampled_macro_auc(y_true: np.ndarray, probs: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Macro AUC of each resample ``idx[r]`` (rows of image indices), averaged over the classes
    the resample holds; NaN for a resample of a single class."""
    labels = y_true[idx]
    per_class = np.stack(
        [binary_auc(labels == k, probs[idx, k]) for k in range(len(CLASSES))], axis=1
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a row with no defined AUC: NaN
        return np.nanmean(per_class, axis=1)


def _bootstrap_ci(
    y_true: np.ndarray, probs: np.ndarray, n_bootstrap: int, seed: int, chunk: int = 64
) -> dict[str, list[float] | None]:
    """Percentile 95% intervals of accuracy and macro AUC over ``n_bootstrap`` resamples."""
    rng = np.random.default_rng(seed)
    n = len(y_true)
    correct = probs.argmax(axis=1) == y_true
    accuracies, macro_aucs = [], []
    for start in range(0, n_bootstrap, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_bootstrap - start), n))
        accuracies.append(correct[idx].mean(axis=1))
        macro_aucs.append(resampled_macro_auc(y_true, probs, idx))
    acc = np.concatenate(accuracies)
    mac = np.concatenate(macro_aucs)
    mac = mac[np.isfinite(mac)]

    def interval(values: np.ndarray) -> list[float] | None:
        if len(values) == 0:
            return None
        lo, hi = np.percentile(values, [2.5, 97.5])
        return [float(lo), float(hi)]

    return {"accuracy": interval(acc), "macro_auc": interval(mac)}


def compute_metrics(
    y_true: np.ndarray, probs: np.ndarray, n_bootstrap: int = 1000, seed: int = 0
) -> dict:
    """All report.json numbers for labels ``y_true`` (N,) and class probabilities ``probs`` (N, 3).

    Args:
        y_true: integer labels in 0..2 (index into ``darklens.CLASSES``).
        probs: class probabilities (rows need not sum to one; the predicted class is the argmax,
            the first class on ties).
        n_bootstrap: resamples for the 95% intervals; 0 skips them (``ci95`` values are ``None``).
        seed: seed of the bootstrap resampling.

    Returns:
        ``{"n", "accuracy", "macro_f1", "auc": {"no", "sphere", "vort", "micro", "macro"},
        "confusion_matrix", "ece", "ci95": {"accuracy", "macro_auc"}}``. A class absent from
        ``y_true`` has AUC ``None``, and ``macro`` averages the defined per-class AUCs only.
        ``confusion_matrix[i][j]`` counts images of true class i predicted as j.
    """
    y_true, probs = _check(y_true, probs)
    y_pred = probs.argmax(axis=1)
    k = len(CLASSES)
    confusion = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    ci = (
        _bootstrap_ci(y_true, probs, n_bootstrap, seed)
        if n_bootstrap > 0
        else {"accuracy": None, "macro_auc": None}
    )
    return {
        "n": int(len(y_true)),
        "accuracy": float(np.mean(y_pred == y_true)),
        "macro_f1": macro_f1(y_true, y_pred),
        "auc": _aucs(y_true, probs),
        "confusion_matrix": confusion.tolist(),
        "ece": expected_calibration_error(y_true, probs),
        "ci95": ci,
    }


def json_safe(value):
    """Replace NaN/inf floats (not valid JSON) by ``None``, recursively."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
