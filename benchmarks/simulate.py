"""Simulator throughput: darklens.sim images/s per preset and device vs lenstronomy on the CPU.

Counts the whole image: ray shooting (SIE + shear + 25 subhalo slots + vortex), source and lens
light, PSF, noise and min-max normalisation, for a mixed batch (a third of each class). The
lenstronomy baseline renders the same preset's drawn parameters (vortex as a 25-point chain,
lenstronomy has no line mass) with ImageModel + numpy noise, one image at a time, in this process.

    python benchmarks/simulate.py --device cpu --out benchmarks/results/simulate_cpu.json
    python benchmarks/simulate.py --device cuda --backends eager,compile,fused --write-check

Backends (``simulator.render``): eager torch, torch.compile, and the fused Triton kernels
(the CUDA default, replayed as one CUDA graph per batch; ``fused-nograph`` launches them one
by one). ``--draw-share`` also times the parameter draws alone (eager torch on (B,) vectors).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

from darklens.sim import simulate_dataset
from darklens.sim.lenstronomy_oracle import lenstronomy_renderer as oracle_renderer
from darklens.sim.presets import get_config
from darklens.sim.rng import image_keys
from darklens.sim.simulator import choose_backend, draw_params, render


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def lenstronomy_renderer(preset, n_images):
    """A closure that renders lenstronomy image b (0 <= b < n_images) of ``preset``, with noise."""
    config = get_config(preset, {"vort_model": "chain"})
    labels = torch.arange(n_images) % 3
    params = draw_params(config, image_keys(0, 0, labels, torch.arange(n_images)), labels)
    # all subhalo slots, empty ones too: the same work darklens does for every image
    noise_free = oracle_renderer(config, keep_empty_subhalos=True)
    rng = np.random.default_rng(0)

    def render_one(b):
        image = noise_free(params, b)
        sigma = np.sqrt((np.clip(image, 0, None) + config.sky) / float(params["exposure"][b])
                        + config.background_rms**2)
        image = image + sigma * rng.standard_normal(image.shape)
        return (image - image.min()) / (image.max() - image.min())

    return render_one


def _mode(mode):
    """'fused' -> render kwargs; 'fused-nograph' is the fused kernels launched one by one."""
    return {"backend": mode.removesuffix("-nograph"), "cuda_graph": not mode.endswith("-nograph")}


def interleaved_rates(preset, device, batch, iters, mode, n_lens):
    """Median rates of darklens batches and lenstronomy images, timed alternately.

    Alternating rounds (one darklens batch, then n_lens / iters lenstronomy images) keep a
    shared, fluctuating CPU load from favouring either side.
    """
    config = get_config(preset)
    labels, indices = torch.arange(batch) % 3, torch.arange(batch)
    t0 = time.perf_counter()
    render(config, 0, 0, labels, indices, device, **_mode(mode))  # warm-up / compile / capture
    _sync(device)
    warmup_s = time.perf_counter() - t0
    one = lenstronomy_renderer(preset, n_lens) if n_lens else None
    ours, theirs, b = [], [], 0
    for it in range(iters):
        t0 = time.perf_counter()
        images, _ = render(config, 0, 0, labels, indices + (it + 1) * batch, device,
                           **_mode(mode))
        _sync(device)
        ours.append(batch / (time.perf_counter() - t0))
        for _ in range(n_lens // iters if one else 0):
            t0 = time.perf_counter()
            one(b)
            theirs.append(1.0 / (time.perf_counter() - t0))
            b += 1
    assert torch.isfinite(images).all()
    return (float(np.median(ours)), (float(np.median(theirs)) if theirs else None),
            warmup_s)


def draw_rate(preset, device, batch, iters):
    """Images/s of the parameter draws alone (keys + draw_params), launched op by op."""
    config = get_config(preset)
    labels = (torch.arange(batch) % 3).to(device)
    rates = []
    for it in range(iters + 1):
        t0 = time.perf_counter()
        indices = torch.arange(batch, device=device) + it * batch
        draw_params(config, image_keys(0, 0, labels, indices), labels)
        _sync(device)
        if it:  # the first is warm-up
            rates.append(batch / (time.perf_counter() - t0))
    return float(np.median(rates))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="model_a,model_i,model_ii")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--backends", default=None,
                    help="comma list of eager, compile, fused, fused-nograph (default: eager "
                         "on CPU, eager,fused on CUDA)")
    ap.add_argument("--draw-share", action="store_true",
                    help="also time the parameter draws alone")
    ap.add_argument("--lenstronomy", type=int, default=30, help="baseline images (0: skip)")
    ap.add_argument("--write-check", action="store_true",
                    help="time `darklens simulate` of a Common-Test-size model_a set")
    ap.add_argument("--write-dir", default=None)
    ap.add_argument("--determinism-check", action="store_true",
                    help="batch halves == full batch per backend; each backend vs eager")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    batch = a.batch or (2048 if device.type == "cuda" else 64)
    modes = (a.backends or ("eager,fused" if device.type == "cuda" else "eager")).split(",")
    for mode in modes:  # an unknown or unavailable backend fails now, not after the baseline
        choose_backend(_mode(mode)["backend"], get_config("model_a"), device)
    card = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    result = {"date": datetime.date.today().isoformat(), "command": " ".join(sys.argv),
              "device": a.device, "card": card, "torch": torch.__version__,
              "cpu_threads": torch.get_num_threads(), "batch": batch,
              "backends": modes,
              "simulate_img_per_s": {}, "lenstronomy_img_per_s": {}, "speedup": {},
              "by_mode": {}}
    for preset in a.presets.split(","):
        best, base = 0.0, None
        for mode in modes:
            n_lens = a.lenstronomy if base is None else 0  # the baseline once per preset
            try:
                rate, lens, warm = interleaved_rates(preset, device, batch, a.iters, mode, n_lens)
            except ImportError:  # no lenstronomy (e.g. the GPU image): darklens alone
                rate, lens, warm = interleaved_rates(preset, device, batch, a.iters, mode, 0)
            base = base or lens
            best = max(best, rate)
            result["by_mode"].setdefault(preset, {})[mode] = {
                "img_per_s": round(rate, 1), "warmup_incl_compile_s": round(warm, 1)}
            print(f"{preset:10s} {mode:8s} darklens {rate:12.1f} img/s  (warm-up {warm:.1f} s)",
                  flush=True)
        if a.draw_share:
            rate = draw_rate(preset, device, batch, a.iters)
            result["by_mode"][preset]["draw_params_only"] = {"img_per_s": round(rate, 1)}
            print(f"{preset:10s} draws    alone    {rate:12.1f} img/s", flush=True)
        result["simulate_img_per_s"][preset] = round(best, 1)
        if base:
            result["lenstronomy_img_per_s"][preset] = round(base, 2)
            result["speedup"][preset] = round(best / base, 1)
            print(f"{preset:10s} lenstronomy {base:8.2f} img/s   x{best / base:.1f}", flush=True)
    if a.determinism_check:
        config = get_config("model_a")
        labels, indices = torch.arange(batch) % 3, torch.arange(batch)
        eager, _ = render(config, 3, 0, labels, indices, device, "eager")
        half = batch // 2
        for mode in modes:
            full, _ = render(config, 3, 0, labels, indices, device, **_mode(mode))
            parts = [render(config, 3, 0, labels[s:s + half], indices[s:s + half], device,
                            **_mode(mode))[0] for s in (0, half)]
            check = {"batch_invariant": bool(torch.equal(torch.cat(parts), full)),
                     "vs_eager_max_abs": float((full - eager).abs().max())}
            result.setdefault("determinism", {})[mode] = check
            print(f"{mode}: batch-invariant {check['batch_invariant']}, "
                  f"max|diff| vs eager {check['vs_eager_max_abs']:.2e}")
    if a.write_check:
        out = tempfile.mkdtemp(dir=a.write_dir)
        shutil.rmtree(out)
        t0 = time.perf_counter()
        simulate_dataset(out, "model_a", n_train=10000, n_val=2500, seed=0, device=a.device,
                         batch=batch, progress=False)
        result["write_common_test_size_s"] = round(time.perf_counter() - t0, 1)
        print(f"darklens simulate 30,000 train + 7,500 val: {result['write_common_test_size_s']} s")
        shutil.rmtree(out)
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
