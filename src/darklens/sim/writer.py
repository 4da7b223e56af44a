"""``darklens simulate``: write a simulated dataset in the Common Test layout.

OUT/{train,val,test}/{no,sphere,vort}/<n>.npy   (1, H, W) float32 in [0, 1]
OUT/params.csv                                   one row per image: path, split, label, parameters
OUT/config.yaml                                  preset, all ranges after overrides, seed, version

Shards: the job list (split by split, index by index, the three classes interleaved) is cut in n
contiguous parts; shard i writes its images and ``OUT/.params/<i>-of-<n>.csv``; whichever shard
finds all parts present merges them into params.csv (each part is written atomically, so the
merge is idempotent when two shards finish together).
"""

from __future__ import annotations

import dataclasses
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from darklens import CLASSES, __version__
from darklens.config import atomic_write_text, check_output_dir, to_dict
from darklens.errors import DarklensError
from darklens.sim.presets import get_config, warn_if_leaky
from darklens.sim.rng import SPLITS
from darklens.sim.simulator import choose_backend, render, resolve_device

_SPLIT_NAMES = ("train", "val", "test")


def _job_list(counts: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(split_id, label, index) of every image in canonical order."""
    split_ids, labels, indices = [], [], []
    for name in _SPLIT_NAMES:
        n = counts[name]
        idx = np.repeat(np.arange(n, dtype=np.int64), 3)
        split_ids.append(np.full(3 * n, SPLITS[name], dtype=np.int64))
        labels.append(np.tile(np.arange(3, dtype=np.int64), n))
        indices.append(idx)
    return np.concatenate(split_ids), np.concatenate(labels), np.concatenate(indices)


def _check_out(out: Path, config_text: str) -> None:
    """Refuse to mix datasets: OUT must be new/empty or hold a dataset with the same config."""
    check_output_dir(out)  # a file, or a path below a file, is one line naming it
    cfg = out / "config.yaml"
    if cfg.exists():
        if cfg.read_text() != config_text:
            raise DarklensError(
                f"{out}: already holds a different simulated dataset (config.yaml differs); "
                "choose another folder or delete it"
            )
    elif out.exists() and any(out.iterdir()):
        raise DarklensError(f"{out}: folder is not empty and holds no darklens config.yaml")


def _save_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def _csv_rows(names: list[str], split_ids, labels, indices, params: dict[str, np.ndarray]) -> str:
    split_name = {v: k for k, v in SPLITS.items()}
    lines = []
    columns = [params[n] for n in names]
    for row in range(len(labels)):
        s, c, i = split_name[int(split_ids[row])], CLASSES[int(labels[row])], int(indices[row])
        values = ",".join(f"{float(col[row]):.9g}" for col in columns)
        lines.append(f"{s}/{c}/{i}.npy,{s},{c},{int(labels[row])},{i},{values}\n")
    return "".join(lines)


def _merge_params(out: Path, n_shards: int, header: str) -> bool:
    parts = [out / ".params" / f"{i}-of-{n_shards}.csv" for i in range(n_shards)]
    if not all(p.exists() for p in parts):
        return False
    atomic_write_text(out / "params.csv", header + "".join(p.read_text() for p in parts))
    return True


def simulate_dataset(out, preset: str = "model_a", n_train: int = 1000, n_val: int = 200,
                     n_test: int = 0, seed: int = 0, device="auto", batch: int | None = None,
                     shard: tuple[int, int] = (0, 1), overrides: dict | None = None,
                     progress: bool = True, backend: str = "auto") -> Path:
    """Simulate and write a dataset (images per class per split); see the module docstring.

    Args:
        out: output folder.
        preset: preset name (see :func:`darklens.sim.list_presets`).
        n_train, n_val, n_test: images per class in each split.
        seed: dataset seed; content depends only on (seed, split, class, index).
        device: "auto", "cpu" or "cuda".
        batch: images per simulated batch (None: 64 on CPU, 2048 on GPU).
        shard: (i, n): write only part i of n.
        overrides: ``--set`` overrides (str -> str).
        progress: show a tqdm bar.
        backend: the renderer's per-pixel backend (see ``simulator.render``; 'auto' is the
            fused Triton kernels on CUDA, eager torch on the CPU).

    Returns:
        The output folder.
    """
    out = Path(out)
    config = get_config(preset, overrides)
    warn_if_leaky(config)
    for name, n in (("--train", n_train), ("--val", n_val), ("--test", n_test)):
        if n < 0:
            raise DarklensError(f"{name}: must be >= 0, got {n}")
    i_shard, n_shards = shard
    if not (n_shards >= 1 and 0 <= i_shard < n_shards):
        raise DarklensError(f"--shard {i_shard}/{n_shards}: need 0 <= i < n")
    if n_train + n_val + n_test == 0:
        raise DarklensError("--train, --val, --test: all 0; a dataset needs at least one image")
    if batch is not None and int(batch) < 1:
        raise DarklensError(f"--batch: must be >= 1, got {batch}")
    dev = resolve_device(device)
    batch = int(batch) if batch else (2048 if dev.type == "cuda" else 64)
    backend = choose_backend(backend, config, dev)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    # The renderer is part of the dataset's identity: the CPU path draws its noise differently
    # from the CUDA ones, and eager and fused CUDA differ in the last bits. Shards must agree.
    renderer = f"{backend} on {dev.type}"
    record = {"darklens_version": __version__, "preset": config.preset, "seed": seed,
              "renderer": renderer,
              "images_per_class": counts, "classes": list(CLASSES),
              "config": to_dict(dataclasses.asdict(config))}
    config_text = yaml.safe_dump(record, sort_keys=False)
    _check_out(out, config_text)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", config_text)
    for s in _SPLIT_NAMES:
        if counts[s]:
            for c in CLASSES:
                (out / s / c).mkdir(parents=True, exist_ok=True)

    split_ids, labels, indices = _job_list(counts)
    total = len(labels)
    lo, hi = total * i_shard // n_shards, total * (i_shard + 1) // n_shards
    names: list[str] | None = None
    rows: list[str] = []
    bar = tqdm(total=hi - lo, desc=f"simulate {config.preset}", unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=8) as pool:
        pending = []
        for start in range(lo, hi, batch):
            stop = min(start + batch, hi)
            n = stop - start
            sel = slice(start, stop)
            # pad the last batch to the full size: one compiled shape / one CUDA graph (a second
            # graph would hold its own buffers), same per-image content
            pad = batch - n if backend in ("compile", "fused") else 0
            lab = torch.from_numpy(np.pad(labels[sel], (0, pad)))
            idx = torch.from_numpy(np.pad(indices[sel], (0, pad)))
            sid = torch.from_numpy(np.pad(split_ids[sel], (0, pad)))
            images, params = render(config, seed, sid, lab, idx, dev, backend)
            images = images[:n].cpu().numpy()
            params = {k: v[:n].cpu().numpy() for k, v in params.items()}
            names = names or list(params)
            for j in range(n):
                k = start + j
                path = out / _SPLIT_NAMES[split_ids[k]] / CLASSES[labels[k]] / f"{indices[k]}.npy"
                pending.append(pool.submit(_save_npy, path, images[j]))
            rows.append(_csv_rows(names, split_ids[sel], labels[sel], indices[sel], params))
            bar.update(n)
            if len(pending) > 2 * batch:  # let writes overlap the next batch, bound memory
                for f in pending[: len(pending) - batch]:
                    f.result()
                pending = pending[len(pending) - batch :]
        for f in pending:
            f.result()
    bar.close()
    header = "path,split,class,label,index," + ",".join(names or []) + "\n"
    part = out / ".params" / f"{i_shard}-of-{n_shards}.csv"
    atomic_write_text(part, "".join(rows))
    _merge_params(out, n_shards, header)
    return out
