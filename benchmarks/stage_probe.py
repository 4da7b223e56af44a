"""Which part of densenet_cbam's training step is slow, and how far from the card's limits?

Times forward + backward of each top-level stage of the notebook's network on its own (the
stage's real input, captured from one forward pass of the whole model), under the fast
recipe's settings: bf16 autocast, channels_last, optionally ``torch.compile`` per stage. For
each stage it reports the time, its share of the sum, its FLOPs (``FlopCounterMode``, forward
and backward) and the bytes of its input and output activations, so the achieved TFLOP/s and a
lower bound on GB/s say whether the stage is compute- or memory-bound, or neither (then the
kernels themselves are the problem: the case for hand-written ones).

    python benchmarks/stage_probe.py --batch 256 --compile --out stage_probe.json

Stage times do not add up exactly to a training step (no optimizer, no EMA, no data), and a
compiled whole model fuses across stage borders; see benchmarks/train_step_probe.py for that.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from darklens.models import create_model

STAGES = ("conv1", "dense_block1", "a_b1", "tras1", "dense_block2", "a_b2", "tras2", "head")


class _Head(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.pool, self.neck = net.pool, net.neck

    def forward(self, x):
        return self.neck(self.pool(x).flatten(1))


def stage_modules(net) -> dict[str, torch.nn.Module]:
    """The network's top-level stages in forward order (``forward_features`` then the head)."""
    return {name: (_Head(net) if name == "head" else getattr(net, name)) for name in STAGES}


def stage_inputs(stages: dict, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each stage's input, from one forward pass through them in order."""
    inputs = {}
    with torch.no_grad():
        for name, module in stages.items():
            inputs[name] = x
            x = module(x)
    return inputs


def _step(module, x: torch.Tensor, amp: bool):
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        y = module(x)
    y.float().square().mean().backward()
    return y


def probe(model: str, batch: int, size: int, device: str, compile_stages: bool, amp: bool,
          iters: int, warmup: int, kwargs: dict | None = None) -> list[dict]:
    dev = torch.device(device)
    net = create_model(model, **(kwargs or {})).to(dev).train()
    fmt = torch.channels_last
    net = net.to(memory_format=fmt)
    stages = stage_modules(net)
    x = torch.rand(batch, 1, size, size, device=dev).to(memory_format=fmt)
    inputs = stage_inputs(stages, x)
    rows = []
    for name, module in stages.items():
        # as in training: every stage but the first passes a gradient back to its input
        inp = inputs[name].detach().clone().requires_grad_(name != STAGES[0])
        run = torch.compile(module) if compile_stages else module
        with FlopCounterMode(display=False) as flops:
            out = _step(module, inp, amp)
        for _ in range(warmup):
            _step(run, inp, amp)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            _step(run, inp, amp)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - t0) / iters
        act_bytes = 2 * (inp.numel() + out.numel())  # bf16 in and out, forward only
        rows.append({"stage": name, "ms": 1e3 * seconds, "gflop": flops.get_total_flops() / 1e9,
                     "tflops": flops.get_total_flops() / seconds / 1e12,
                     "in_out_mb": act_bytes / 1e6, "in_shape": list(inp.shape[1:]),
                     "out_shape": list(out.shape[1:])})
        net.zero_grad(set_to_none=True)
    total = sum(r["ms"] for r in rows)
    for r in rows:
        r["share"] = r["ms"] / total
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="densenet_cbam")
    ap.add_argument("--kwargs", default="{}",
                    help='model kwargs (YAML), e.g. "{pool_first: false}"')
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=150)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of the script itself")
    ap.add_argument("--compile", action="store_true", help="torch.compile each stage")
    ap.add_argument("--no-amp", action="store_true")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    rows = probe(a.model, a.batch, a.size, a.device, a.compile, not a.no_amp, a.iters, a.warmup,
                 yaml.safe_load(a.kwargs) or {})
    print(f"{'stage':14s} {'ms':>8s} {'share':>6s} {'GFLOP':>8s} {'TFLOP/s':>8s} "
          f"{'in+out MB':>9s}  shapes")
    for r in rows:
        print(f"{r['stage']:14s} {r['ms']:8.2f} {r['share']:6.1%} {r['gflop']:8.1f} "
              f"{r['tflops']:8.2f} {r['in_out_mb']:9.1f}  {r['in_shape']} -> {r['out_shape']}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"argv": vars(a), "device": torch.cuda.get_device_name()
                       if a.device == "cuda" else "cpu", "torch": torch.__version__,
                       "stages": rows}, f, indent=1)


if __name__ == "__main__":
    main()
