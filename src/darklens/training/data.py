"""Training data on the device: packed arrays or on-the-fly simulation, D4 augmentation.

The whole train split is copied once into one tensor (on the GPU when it fits), so the loop never
touches a file: a batch is an index into that tensor. Batch order and augmentation come from
generators seeded by (seed, epoch), so an epoch is the same wherever it is re-run (resume, DDP).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from darklens import CLASSES
from darklens.config import atomic_write_text
from darklens.data.layout import ALL_SPLIT
from darklens.errors import DarklensError

SIM_PREFIX = "sim:"


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, epoch, salt): same draws on any device."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 7_919 + salt) % (2**63))
    return g


def d4_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply one random element of the dihedral group D4 to each image of (B, C, H, W).

    D4 (the 8 rotations/flips of a square) is an exact symmetry of lensing simulations.
    Each element is {transpose or not} x {flip W or not} x {flip H or not}; the transpose is
    skipped for non-square images (then only the 4 flips are used).
    """
    b = images.shape[0]
    draws = torch.rand(3, b, generator=generator) < 0.5  # on the CPU: the same on any device
    if images.device.type == "cuda":
        # From pinned memory without blocking: a plain copy waits for the GPU to finish every
        # queued kernel, once per training step, and the next step then starts from an empty
        # queue (the caching host allocator keeps the pinned block until the copy is done).
        draws = draws.pin_memory().to(images.device, non_blocking=True)
    else:
        draws = draws.to(images.device)
    draws = draws.view(3, b, 1, 1, 1)
    if images.shape[-1] == images.shape[-2]:
        images = torch.where(draws[0], images.transpose(-1, -2), images)
    images = torch.where(draws[1], images.flip(-1), images)
    return torch.where(draws[2], images.flip(-2), images)


@dataclass
class ArraySplit:
    """Images (N, 1, H, W) and labels (N,) as tensors, plus what identifies each image."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str] = field(default_factory=list)
    sha256: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _to_tensor(images: np.ndarray, device: torch.device, chunk: int = 2048) -> torch.Tensor:
    """Copy (N, H, W) float32 (a memmap) to a (N, 1, H, W) tensor on ``device`` in chunks.

    On the GPU the pixels are kept in float16 when float32 would take more than a quarter of
    the free memory (images are in [0, 1]: float16 keeps ~3 decimal digits).
    """
    n, h, w = images.shape
    dtype = torch.float32
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if n * h * w * 4 > free / 4:
            dtype = torch.float16
    out = torch.empty((n, 1, h, w), dtype=dtype, device=device)
    for start in range(0, n, chunk):
        block = np.array(images[start:start + chunk], dtype=np.float32)  # writable copy
        out[start:start + chunk, 0] = torch.from_numpy(block).to(device, dtype)
    return out


def stratified_val_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a stratified validation subset: ``fraction`` of each class, chosen by seed."""
    if not 0.0 < fraction < 1.0:
        raise DarklensError(f"val_fraction={fraction}: expected a number in (0, 1)")
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = max(1, int(round(len(members) * fraction)))
        if k >= len(members):
            raise DarklensError(f"class {CLASSES[c]!r} has {len(members)} images: too few to split")
        picked.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(picked))


def check_leakage(train_sha: list[str], train_paths: list[str], val_sha: list[str],
                  val_paths: list[str], root: str) -> None:
    """Refuse to train when an image (by content hash) is in both train and val."""
    val_by_hash = {h: p for h, p in zip(val_sha, val_paths)}
    shared = [(p, val_by_hash[h]) for h, p in zip(train_sha, train_paths) if h in val_by_hash]
    if shared:
        a, b = shared[0]
        raise DarklensError(
            f"{root}: {len(shared)} images are in both train and val (e.g. {a} = {b}); "
            "remove the duplicates before training"
        )


def training_split_name(splits: list[str], data: str) -> str:
    """The split to train on: ``train``, or ``all`` for unsplit class folders; never val/test.

    Raises:
        DarklensError: split folders exist but none is called ``train``.
    """
    if "train" in splits:
        return "train"
    if splits == [ALL_SPLIT]:
        return ALL_SPLIT
    raise DarklensError(f"{data}: no 'train' split (found: {', '.join(splits) or 'none'}); "
                        "training never uses val or test images: add a train/ folder")


#: the content hashes of the images a run trained on, one per line: ``darklens evaluate``
#: refuses to score any of them (the seed notebook's "validation" scored training images)
TRAIN_HASHES_NAME = "train_sha256.txt"


def write_train_hashes(out: Path, sha256: list[str]) -> None:
    atomic_write_text(out / TRAIN_HASHES_NAME, "".join(f"{h}\n" for h in sorted(set(sha256))))


def read_train_hashes(run: Path) -> set[str] | None:
    """The hashes a run folder recorded, or None when it has none (``sim:`` runs, old runs)."""
    path = run / TRAIN_HASHES_NAME
    try:
        return set(path.read_text().split())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise DarklensError(f"{path}: cannot read the run's training hashes ({e})") from None


def shared_images(a_sha: list[str], a_paths: list[str], b_sha: list[str] | set[str]
                  ) -> list[str]:
    """Paths of ``a`` whose content hash is also in ``b``."""
    b = set(b_sha)
    return [p for h, p in zip(a_sha, a_paths, strict=True) if h in b]


def write_val_split(out: Path, *, seed: int, fraction: float, val_paths: list[str]) -> None:
    """``out/val_split.json``: which images a stratified split held out for validation."""
    atomic_write_text(out / "val_split.json", json.dumps(
        {"seed": seed, "fraction": fraction, "val_paths": list(val_paths)}, indent=1))


def load_array_splits(data: str, *, seed: int, val_fraction: float, device: torch.device,
                      allow_pickle: bool, progress: bool) -> tuple[ArraySplit, ArraySplit,
                                                                   dict]:
    """Open a dataset, choose train/val, check leakage, and put both splits on ``device``.

    Trains on ``train`` (or ``all``, unsplit class folders), validates on ``val`` when there is
    one, else on a stratified ``val_fraction`` of the training split (``info["stratified_val"]``).

    Returns (train, val, info) where ``info`` records how validation was chosen.
    """
    from darklens.data import open_dataset

    ds = open_dataset(data, allow_pickle=allow_pickle, progress=progress)
    train_name = training_split_name(ds.splits, data)
    if "val" in ds.splits and train_name == "train":
        tr, va = ds.split(train_name), ds.split("val")
        tr_idx, va_idx = np.arange(len(tr.labels)), np.arange(len(va.labels))
        info = {"val_source": "val split", "train_split": train_name}
    else:
        tr = va = ds.split(train_name)
        labels = np.asarray(tr.labels)
        va_idx = stratified_val_indices(labels, val_fraction, seed)
        tr_idx = np.setdiff1d(np.arange(len(labels)), va_idx)
        # The caller records exactly which images validate (write_val_split) once training
        # starts, so evaluation can exclude them later; a refused run leaves no file behind.
        info = {"val_source": f"stratified {val_fraction:g} of {train_name!r}, seed {seed}",
                "train_split": train_name, "stratified_val": True}
    tr_paths = [tr.paths[i] for i in tr_idx]
    va_paths = [va.paths[i] for i in va_idx]
    tr_sha = [tr.sha256[i] for i in tr_idx]
    check_leakage(tr_sha, tr_paths, [va.sha256[i] for i in va_idx], va_paths, str(data))
    if "test" in ds.splits:  # not the run's to refuse, but its test numbers would be wrong
        test = ds.split("test")
        leaked = shared_images(test.sha256, test.paths, tr_sha)
        if leaked:
            warnings.warn(f"{data}: {len(leaked)} test images are also training images (e.g. "
                          f"{leaked[0]}, by content hash); darklens evaluate will refuse to "
                          "score this test split: remove the duplicates (darklens inspect lists "
                          "them)", stacklevel=2)
    if len(tr_idx) == 0 or len(va_idx) == 0:
        raise DarklensError(f"{data}: need images in both train and val")

    def take(split, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        images = split.images if len(idx) == len(split.labels) else split.images[idx]
        labels = torch.as_tensor(np.asarray(split.labels)[idx], dtype=torch.long)
        return _to_tensor(np.asarray(images), device), labels.to(device)

    train = ArraySplit(*take(tr, tr_idx), paths=tr_paths, sha256=tr_sha)
    val = ArraySplit(*take(va, va_idx), paths=va_paths)
    info.update(n_train=len(train), n_val=len(val), image_shape=list(ds.image_shape))
    return train, val, info


def array_batches(split: ArraySplit, *, batch_size: int, seed: int, epoch: int, rank: int = 0,
                  world_size: int = 1, augment: str = "none",
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled batches of one epoch (drop_last); rank r takes every world_size-th batch."""
    g = epoch_generator(seed, epoch)
    order = torch.randperm(len(split), generator=g).to(split.labels.device)
    n_batches = len(split) // (batch_size * world_size)
    aug_g = epoch_generator(seed, epoch, salt=rank + 1)
    for step in range(n_batches):
        start = (step * world_size + rank) * batch_size
        idx = order[start:start + batch_size]
        x = split.images.index_select(0, idx).float()
        if augment == "d4":
            x = d4_augment(x, aug_g)
        yield x, split.labels.index_select(0, idx)


def steps_per_epoch(n_train: int, batch_size: int, world_size: int) -> int:
    return n_train // (batch_size * world_size)


def sim_preset(data: str) -> str | None:
    """``"sim:model_a"`` -> ``"model_a"``; anything else -> None."""
    return data[len(SIM_PREFIX):] if data.startswith(SIM_PREFIX) else None


def simulate_val(preset: str, n_per_class: int, *, seed: int, device: torch.device,
                 overrides: dict, chunk: int = 256) -> ArraySplit:
    """A fixed simulated validation set: ``n_per_class`` images of each class, split 'val'."""
    from darklens.sim import simulate_batch

    labels = torch.arange(len(CLASSES)).repeat_interleave(n_per_class)
    images = []
    for start in range(0, len(labels), chunk):
        x, _, _ = simulate_batch(preset=preset, labels=labels[start:start + chunk], seed=seed,
                                 split="val", start_index=start, device=str(device),
                                 overrides=overrides or None)
        images.append(x.to(device, torch.float32))
    return ArraySplit(torch.cat(images), labels.to(device),
                      paths=[f"sim:{preset}/val/{i}" for i in range(len(labels))])


def mass_boost(boost: float, boost_epochs: int, epoch: int) -> float:
    """The curriculum's factor for ``epoch``: ``boost`` at epoch 0, falling geometrically to 1
    at ``boost_epochs`` (1 from then on)."""
    if boost_epochs <= 0 or epoch >= boost_epochs:
        return 1.0
    return float(boost) ** (1 - epoch / boost_epochs)


def mass_boosted(preset: str, overrides: dict, boost: float, boost_epochs: int,
                 epoch: int) -> dict:
    """``overrides`` with the preset's subhalo and vortex masses (fractions or solar masses,
    as each class's mass mode says) scaled by ``mass_boost(...)``: heavier, easier
    substructure early in training, the real one later."""
    factor = mass_boost(boost, boost_epochs, epoch)
    if factor == 1.0:
        return overrides
    from darklens.sim.presets import get_config

    config = get_config(preset, overrides)
    scaled = dict(overrides)
    for cls in ("sub", "vort"):
        key = f"{cls}_mass_{getattr(config, f'{cls}_mass_mode')}"  # e.g. sub_mass_fraction
        lo, hi = getattr(config, key)
        scaled[key] = f"[{lo * factor!r}, {hi * factor!r}]"
    return scaled


def sim_batches(preset: str, *, batch_size: int, steps: int, seed: int, epoch: int, rank: int,
                device: torch.device, overrides: dict, augment: str = "none",
                with_signal: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
    """Fresh simulated training batches; the stream's seed depends on (seed, epoch, rank).

    With ``with_signal`` each batch is ``(images, labels, chi2)``: the per-pixel substructure
    chi-square of each image, flipped and rotated with it.
    """
    from darklens.sim import SimulatedStream

    stream_seed = int(torch.randint(0, 2**31 - 1, (1,),
                                    generator=epoch_generator(seed, epoch, salt=1000 + rank)))
    stream = SimulatedStream(preset, batch_size, stream_seed, str(device), overrides or None,
                             with_signal=with_signal)
    aug_g = epoch_generator(seed, epoch, salt=rank + 1)
    it = iter(stream)
    for _ in range(steps):
        x, y, *signal = next(it)
        if signal:  # one tensor, so the image and its map get the same D4 element
            x = torch.cat([x, *signal], 1)
        x = x.to(device, torch.float32)
        if augment == "d4":
            x = d4_augment(x, aug_g)
        y = torch.as_tensor(y, device=device, dtype=torch.long)
        yield (x[:, :1], y, x[:, 1:]) if with_signal else (x, y)
