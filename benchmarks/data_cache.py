"""Benchmark: first (packing) vs second (cached) read of a Common-Test-size folder.

Writes N images per class per split as (1, 150, 150) float32 .npy files (the Common Test layout:
10,000 train + 2,500 val per class = 37,500 files), then times ``open_dataset`` twice in fresh
subprocesses (cold Python each time; the OS page cache is warm for both, which favours the first
read, the baseline). Usage:

    python benchmarks/data_cache.py --train 10000 --val 2500 \\
        --out benchmarks/results/data_cache.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TIMED = (
    "import time, sys; t=time.perf_counter(); from darklens.data import open_dataset; "
    "ds=open_dataset(sys.argv[1], progress=False); s=[ds.split(x) for x in ds.splits]; "
    "n=sum(len(x) for x in s); checksum=float(sum(x.images[-1].sum() for x in s)); "
    "print(time.perf_counter()-t, n, checksum)"
)


def write_dataset(root: Path, n_train: int, n_val: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for name in ("no", "sphere", "vort"):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                np.save(d / f"{i + 1}.npy", rng.random((1, size, size), dtype=np.float32))


def timed_open(root: Path, env: dict) -> tuple[float, int]:
    out = subprocess.run([sys.executable, "-c", TIMED, str(root)], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), int(out[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=10_000, help="train images per class")
    ap.add_argument("--val", type=int, default=2_500, help="val images per class")
    ap.add_argument("--size", type=int, default=150)
    ap.add_argument("--out", default=None, help="JSON result file")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="darklens-bench-"))
    try:
        t = time.perf_counter()
        write_dataset(work / "data", args.train, args.val, args.size)
        t_write = time.perf_counter() - t
        env = dict(os.environ, DARKLENS_CACHE=str(work / "cache"))
        first, n = timed_open(work / "data", env)
        second, _ = timed_open(work / "data", env)
        third, _ = timed_open(work / "data", env)
        result = {
            "benchmark": "data_cache", "n_images": n, "image_size": args.size,
            "first_read_s": round(first, 3), "second_read_s": round(second, 3),
            "third_read_s": round(third, 3),
            "speedup": round(first / min(second, third), 1),
            "write_files_s": round(t_write, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
            "date": dt.date.today().isoformat(),
            "command": "python benchmarks/data_cache.py " + " ".join(sys.argv[1:]),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
