"""Report figures: ROC curves, confusion matrix, reliability diagram, most confident mistakes.

Every function writes one PNG with the Agg backend (no display needed) and returns its path.
The numbers printed on the figures come from :func:`compute_metrics`, so the plots and
report.json can never disagree.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from darklens import CLASSES  # noqa: E402
from darklens.evaluation.metrics import ECE_BINS  # noqa: E402

CLASS_COLORS = ("tab:blue", "tab:orange", "tab:green")
DPI = 120


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_roc(y_true: np.ndarray, probs: np.ndarray, metrics: dict, path: str | Path) -> Path:
    """One-vs-rest ROC curve per class, plus micro and macro averages, AUCs in the legend."""
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(11, 5), layout="constrained")
    one_hot = y_true[:, None] == np.arange(len(CLASSES))[None, :]
    grid = np.linspace(0.0, 1.0, 1001)
    tprs = []
    curves = []
    for k, name in enumerate(CLASSES):
        if metrics["auc"][name] is None:  # class absent: no curve, but say so in the legend
            curves.append(([], [], f"{name} (absent: no AUC)", dict(color=CLASS_COLORS[k], lw=0)))
            continue
        fpr, tpr, _ = roc_curve(one_hot[:, k], probs[:, k])
        tprs.append(np.interp(grid, fpr, tpr))
        curves.append((fpr, tpr, f"{name} (AUC {_fmt(metrics['auc'][name])})",
                       dict(color=CLASS_COLORS[k], lw=1.8)))
    fpr, tpr, _ = roc_curve(one_hot.ravel(), probs.ravel())
    curves.append((fpr, tpr, f"micro (AUC {_fmt(metrics['auc']['micro'])})",
                   dict(color="black", lw=1.5, ls="--")))
    if tprs:
        curves.append((grid, np.mean(tprs, axis=0),
                       f"macro (AUC {_fmt(metrics['auc']['macro'])})",
                       dict(color="tab:purple", lw=1.5, ls=":")))
    for axis in (ax, zoom):
        for x, y, label, style in curves:
            axis.plot(x, y, label=label, **style)
        axis.plot([0, 1], [0, 1], color="0.7", lw=1, ls="-", zorder=0)
        axis.set_xlabel("false positive rate")
        axis.set_ylabel("true positive rate")
        axis.grid(alpha=0.3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(f"ROC, one-vs-rest (n = {metrics['n']})")
    ax.legend(loc="lower right")
    # near-perfect classifiers hug the corner: the zoom shows where they differ
    zoom.set_xlim(0, 0.2)
    zoom.set_ylim(0.8, 1.005)
    zoom.set_title("top-left corner")
    return _save(fig, Path(path))


def plot_confusion(confusion: list[list[int]], path: str | Path) -> Path:
    """Confusion matrix: counts and the share of each true class (row) in every cell."""
    cm = np.asarray(confusion)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    fig, ax = plt.subplots(figsize=(5.8, 4.8), layout="constrained")
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.1%}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=11)
    ax.set_xticks(range(len(CLASSES)), CLASSES)
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix")
    return _save(fig, Path(path))


def plot_calibration(y_true: np.ndarray, probs: np.ndarray, ece: float, path: str | Path) -> Path:
    """Reliability diagram of the top-label confidence, with the confidence histogram below."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, ECE_BINS + 1)
    bins = np.clip(np.ceil(confidence * ECE_BINS).astype(int) - 1, 0, ECE_BINS - 1)
    counts = np.bincount(bins, minlength=ECE_BINS)
    acc = np.bincount(bins, weights=correct, minlength=ECE_BINS) / np.maximum(counts, 1)
    conf = np.bincount(bins, weights=confidence, minlength=ECE_BINS) / np.maximum(counts, 1)
    used = counts > 0
    width = 1.0 / ECE_BINS
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, layout="constrained",
                                   gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(edges[:-1][used], acc[used], width=width, align="edge", color="tab:blue",
           edgecolor="black", label="accuracy in bin")
    ax.bar(edges[:-1][used], (conf - acc)[used], bottom=acc[used], width=width, align="edge",
           color="tab:red", alpha=0.35, edgecolor="tab:red", hatch="//", label="gap to confidence")
    ax.plot([0, 1], [0, 1], color="0.3", ls="--", lw=1, label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"reliability ({ECE_BINS} bins), ECE = {ece:.4f}")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    hist.bar(edges[:-1], counts, width=width, align="edge", color="0.5", edgecolor="black")
    hist.set_yscale("log" if counts.max() > 50 * max(counts[used].min(), 1) else "linear")
    hist.set_xlabel("confidence (largest class probability)")
    hist.set_ylabel("images")
    return _save(fig, Path(path))


def most_confident_mistakes(y_true: np.ndarray, probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of up to ``k`` wrong predictions, most confident first."""
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != y_true)
    order = np.argsort(-probs[wrong, pred[wrong]], kind="stable")
    return wrong[order[:k]]


def plot_examples(images: np.ndarray, y_true: np.ndarray, probs: np.ndarray, paths: list[str],
                  path: str | Path, k: int = 12) -> Path:
    """The ``k`` most confident mistakes: image, true and predicted class, file name.

    ``images`` may be a list of per-split arrays indexed like ``y_true`` after concatenation.
    """
    picks = most_confident_mistakes(y_true, probs, k)
    cols = 4
    rows = max(1, int(np.ceil(len(picks) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 3.5 * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    if len(picks) == 0:
        axes[0, 0].text(0.0, 0.5, "no mistakes", fontsize=14, transform=axes[0, 0].transAxes)
    pred = probs.argmax(axis=1)
    for ax, i in zip(axes.ravel(), picks):
        image = np.asarray(images[i], dtype=np.float32).squeeze()
        ax.imshow(image, cmap="inferno", origin="lower")
        name = paths[i] if len(paths[i]) <= 36 else "..." + paths[i][-33:]
        ax.set_title(f"true {CLASSES[y_true[i]]}, pred {CLASSES[pred[i]]} "
                     f"(p = {probs[i, pred[i]]:.2f})\n{name}", fontsize=9)
    fig.suptitle("most confident mistakes", fontsize=13)
    return _save(fig, Path(path))
