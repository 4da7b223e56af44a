"""What a signal head's loss means: the loss of predictors that know nothing of the image.

``train_signal_loss`` (``--set signal_weight=W``) is the mean squared error of the predicted
``log(1 + chi-square per cell)`` map. A head that learned nothing about where an image's
substructure is can still score: a constant, the mean map over images, or the mean map of the
image's own class (as if it knew the label). This prints those three losses on freshly simulated
images at the preset's own masses, so a run's final map loss can be read against them.

    PYTHONPATH=src python benchmarks/signal_map_baselines.py --preset model_a --images 384
"""

from __future__ import annotations

import argparse
import json

import torch

from darklens.sim.presets import get_config
from darklens.sim.rng import SPLITS
from darklens.sim.simulator import render
from darklens.training.signal import signal_target


def baselines(preset: str, images: int, seed: int, grid: int, device: str) -> dict:
    config = get_config(preset)
    labels, indices = torch.arange(images) % 3, torch.arange(images)
    both, _ = render(config, seed, SPLITS["test"], labels, indices, device, with_signal=True)
    target = signal_target(both[:, 1:].cpu(), (grid, grid))  # (N, 1, grid, grid)

    def mse(prediction: torch.Tensor) -> float:
        return float(((prediction - target) ** 2).mean())

    per_class = torch.stack([target[labels == c].mean(0) for c in range(3)])[labels]
    return {"preset": preset, "images": images, "seed": seed, "grid": grid,
            "best_constant": mse(target.mean()),
            "mean_map": mse(target.mean(0, keepdim=True)),
            "mean_map_of_the_true_class": mse(per_class)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="model_a")
    p.add_argument("--images", type=int, default=384, help="a third of each class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", type=int, default=19, help="cells per side (resnet layer2: 19)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    print(json.dumps(baselines(a.preset, a.images, a.seed, a.grid, a.device), indent=1))


if __name__ == "__main__":
    main()
