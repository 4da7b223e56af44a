"""Tiny learnable lensing-like datasets for the training tests (Common Test layout on disk).

"no": a smooth ring; "sphere": the ring plus bright dots; "vort": the ring plus a bright line.
The classes are separable, so a few CPU epochs of a tiny model must reach a high AUC.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from darklens import CLASSES


def make_image(label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(xx, yy)
    img = np.exp(-((r - size * 0.3) ** 2) / 4.0) * rng.uniform(0.6, 1.0)
    if label == 1:
        for _ in range(4):
            y, x = rng.integers(4, size - 4, 2)
            img[y - 1:y + 1, x - 1:x + 1] += 0.8
    elif label == 2:
        y = rng.integers(6, size - 6)
        x0 = rng.integers(2, size // 2)
        if rng.random() < 0.5:
            img[y, x0:x0 + size // 2] += 0.8
        else:
            img[x0:x0 + size // 2, y] += 0.8
    img += rng.normal(0, 0.05, img.shape)
    img = (img - img.min()) / (img.max() - img.min())
    return img.astype(np.float32)[None]


def write_dataset(root: Path, n_train: int, n_val: int | None, seed: int = 0,
                  size: int = 32) -> Path:
    """Write train/ (and val/ unless n_val is None) with n images per class."""
    rng = np.random.default_rng(seed)
    splits = {"train": n_train} if n_val is None else {"train": n_train, "val": n_val}
    for split, n in splits.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                np.save(folder / f"{i}.npy", make_image(label, rng, size))
    return root


class MinuteClock:
    """``time`` for darklens.train whose every reading is a minute after the last (time limits
    and budgets without waiting)."""

    def __init__(self):
        self.now = -60.0

    def perf_counter(self):
        self.now += 60.0
        return self.now
