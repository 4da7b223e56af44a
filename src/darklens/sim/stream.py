"""On-the-fly training data: an IterableDataset of freshly simulated, class-balanced batches."""

from __future__ import annotations

import torch
from torch.utils.data import IterableDataset, get_worker_info

from darklens.sim.presets import SimConfig, get_config
from darklens.sim.rng import SPLITS, image_keys, uniform
from darklens.sim.simulator import render, resolve_device


class SimulatedStream(IterableDataset):
    """Endless (or ``num_batches``-long) stream of ``(images, labels)`` batches.

    Batch b holds images with indices ``b * batch_size + i`` of the "stream" split, so the stream
    never repeats a train/val/test image of the same seed, and with DataLoader workers each
    worker takes every n-th batch (no duplicates). Labels are drawn per image from its own key
    (balanced in expectation, mixed within each batch).

    Args:
        preset: preset name or :class:`SimConfig`.
        batch_size: images per batch.
        seed: stream seed.
        device: where to simulate ("cpu", "cuda", "auto"); with DataLoader workers use "cpu".
        overrides: ``--set`` style overrides.
        num_batches: stop after this many batches (None: endless).
        start_batch: first batch number (to resume a stream).
        with_signal: yield ``(images, labels, chi2)``, where ``chi2`` (B, 1, H, W) is each
            image's per-pixel substructure chi-square (``render(with_signal=True)``).
    """

    def __init__(self, preset: str | SimConfig = "model_a", batch_size: int = 64, seed: int = 0,
                 device="cpu", overrides: dict | None = None, num_batches: int | None = None,
                 start_batch: int = 0, with_signal: bool = False):
        super().__init__()
        self.config = get_config(preset, overrides)
        self.batch_size = int(batch_size)
        self.seed = seed
        self.device = resolve_device(device)
        self.num_batches = num_batches
        self.start_batch = start_batch
        self.with_signal = with_signal

    def labels_for(self, indices: torch.Tensor) -> torch.Tensor:
        """Class of each stream image, a pure function of (seed, index)."""
        zeros = torch.zeros_like(indices)
        keys = image_keys(self.seed, SPLITS["stream"], zeros - 1, indices)
        return torch.clamp((uniform(keys, 1) * 3).to(torch.int64), max=2)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        b = self.start_batch + worker
        # Indices and labels are made where the images are: a blocking host-to-GPU copy per
        # batch would wait for the GPU to drain, and the training step after it would then
        # start from an empty queue.
        offsets = torch.arange(self.batch_size, dtype=torch.int64, device=self.device)
        while self.num_batches is None or b < self.start_batch + self.num_batches:
            indices = offsets + b * self.batch_size
            labels = self.labels_for(indices)
            images, _ = render(self.config, self.seed, SPLITS["stream"], labels, indices,
                               self.device, with_signal=self.with_signal)
            yield (images[:, :1], labels, images[:, 1:]) if self.with_signal else (images, labels)
            b += workers
