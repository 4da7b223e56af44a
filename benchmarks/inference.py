"""Benchmark: inference images/s of the notebook's model (``densenet_cbam``, 150x150), CPU and GPU.

Both devices in one run (GPU skipped when there is none). For each device it times:

* ``model``: the forward pass alone on a batch already on the device (fp32, inference mode);
* ``predict_proba``: what ``darklens evaluate``/``predict`` do per batch, from float32 images in
  host memory (as the packed cache's memmap hands them over): copy, host->device, preprocessing
  (x - 0.5), forward, softmax, device->host;
* ``predict_proba_tta``: the same with D4 test-time augmentation (8 forward passes per image).

Random weights and random pixels: the cost does not depend on either. Usage:

    python benchmarks/inference.py --out benchmarks/results/inference.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from darklens.evaluation import predict_proba
from darklens.evaluation.inference import probs_for_batch
from darklens.models import create_model

MODEL = "densenet_cbam"
SIZE = 150
META = {"model": MODEL, "classes": ["no", "sphere", "vort"],
        "preprocessing": {"subtract": 0.5, "input_size": [SIZE, SIZE]}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn, n_images: int, device: torch.device, repeats: int) -> float:
    """Best images/s over ``repeats`` timed calls (after one warm-up call)."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return n_images / best


def bench_device(device: torch.device, batch: int, n_images: int, repeats: int) -> dict:
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # what evaluate/predict set on CUDA
    model = create_model(MODEL).to(device).eval()
    x = torch.rand(batch, 1, SIZE, SIZE, device=device) - 0.5
    images = np.random.default_rng(0).random((n_images, SIZE, SIZE), dtype=np.float32)

    def forward():
        with torch.inference_mode():
            model(x)

    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "batch": batch,
        "n_images": n_images,
        "model_img_per_s": round(_rate(forward, batch, device, repeats), 1),
        "predict_proba_img_per_s": round(_rate(
            lambda: predict_proba(model, META, images, batch_size=batch, device=device,
                                  progress=False), n_images, device, repeats), 1),
    }
    n_tta = max(4, n_images // 8)  # 8 forward passes per image: fewer images, similar time
    result["predict_proba_tta_img_per_s"] = round(_rate(
        lambda: predict_proba(model, META, images[:n_tta], batch_size=batch, device=device,
                              tta=True, progress=False), n_tta, device, repeats), 1)
    # sanity: the timed path gives the same numbers as a plain forward
    with torch.inference_mode():
        direct = probs_for_batch(model, torch.from_numpy(images[:4]).to(device)[:, None] - 0.5)
    got = predict_proba(model, META, images[:4], device=device, progress=False)
    result["max_abs_diff_vs_direct"] = float(np.abs(got - direct.double().cpu().numpy()).max())
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-batch", type=int, default=32)
    ap.add_argument("--cpu-images", type=int, default=64)
    ap.add_argument("--gpu-batch", type=int, default=256)
    ap.add_argument("--gpu-images", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu-threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice, one per core)")
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/inference.json", help="JSON result file")
    args = ap.parse_args()

    results = {}
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    if not args.skip_cpu:
        results["cpu"] = bench_device(torch.device("cpu"), args.cpu_batch, args.cpu_images,
                                      args.repeats)
        print("cpu", results["cpu"], file=sys.stderr)
    if torch.cuda.is_available():
        results["cuda"] = bench_device(torch.device("cuda"), args.gpu_batch, args.gpu_images,
                                       args.repeats)
        print("cuda", results["cuda"], file=sys.stderr)
    report = {
        "benchmark": "inference", "model": MODEL, "image_size": SIZE, "precision": "fp32",
        "results": results,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        # other processes on the box slow the CPU numbers: the 1-minute load says how busy it was
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "date": dt.date.today().isoformat(),
        "command": "python benchmarks/inference.py " + " ".join(sys.argv[1:]),
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
