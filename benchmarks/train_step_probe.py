"""Where a training step's time goes: darklens' own epoch loop, one setting at a time.

Each variant builds the model, the fused AdamW, EMA and D4 batches from a device-resident split
exactly as ``darklens train`` does, runs a few warm-up steps (this is where ``torch.compile``
compiles), then times ``training.loop.train_one_epoch`` over ``--steps`` steps. Random images
(uniform in [0, 1], never zeros) stand in for data: speed does not depend on pixel values.

    python benchmarks/train_step_probe.py --steps 20 \\
        --variants "eager:amp=bf16,cl=1" "bench:amp=bf16,cl=1,bench=1" \\
        --profile bench --out probe.json --profile-out profile.txt

Keys of a variant (``name:key=value,...``): ``model`` (densenet_cbam), ``kwargs`` (YAML model
kwargs, default ``{seed_exact: true}``), ``amp`` (bf16|none), ``cl`` (channels_last 0|1),
``bench`` (cudnn.benchmark 0|1),
``compile`` (off|default|reduce-overhead|max-autotune-no-cudagraphs),
``batch`` (256), ``sync`` (1: wait for the GPU after every step, as darklens did before its
non-finite check moved onto the device), ``ema`` (0.998; 0 disables), ``prelu`` (how the
model's PReLUs are computed, same weights and values: ``model`` = the model's own; ``module`` =
torch's ``nn.PReLU``; ``where`` = ``torch.where`` with autograd's own weight gradient;
``split`` = a custom backward that sums the weight gradient per sample first, then over the
batch; the model's own splits it into many more rows, see ``models/densenet_cbam.py``),
``pool`` (densenet_cbam's transitions pool before their conv, 1|0; 0 = the notebook's order;
the default is 1 since session 8, so earlier sessions' commands need ``pool=0`` to re-measure
what they measured).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import torch
import yaml

from darklens.models import create_model
from darklens.training import data as tdata
from darklens.training import loop

DEFAULTS = dict(model="densenet_cbam", kwargs="{seed_exact: true}", amp="bf16", cl="1",
                bench="0", compile="off", batch="256", sync="0", ema="0.998", prelu="model",
                pool="1")


class WherePReLU(torch.nn.PReLU):
    """``nn.PReLU`` written as ``torch.where``: autograd derives the weight gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype).view(1, -1, *([1] * (x.dim() - 2))) if x.dim() > 1 else \
            self.weight.to(x.dtype)
        return torch.where(x > 0, x, x * w)


class _SplitPReLUFn(torch.autograd.Function):
    """Scalar-weight PReLU whose weight gradient is reduced per sample first, then over the
    batch: the compiled step spent ~10 ms of 53 in inductor's one-pass scalar reductions."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return torch.where(x > 0, x, x * weight.to(x.dtype))

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = torch.where(x > 0, grad, grad * weight.to(grad.dtype))
        prod = torch.where(x > 0, torch.zeros_like(grad), grad * x).float()
        per_sample = prod.sum(dim=tuple(range(1, x.dim()))) if x.dim() > 1 else prod
        return grad_x, per_sample.sum().reshape(weight.shape).to(weight.dtype)


class SplitPReLU(torch.nn.PReLU):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_parameters != 1:
            return super().forward(x)
        return _SplitPReLUFn.apply(x, self.weight)


PRELU = {"module": torch.nn.PReLU, "where": WherePReLU, "split": SplitPReLU}


def swap_prelu(net: torch.nn.Module, impl: str) -> torch.nn.Module:
    """Every ``nn.PReLU`` of ``net`` computed by ``PRELU[impl]`` (same parameters)."""
    if impl == "model":
        return net
    for module in net.modules():
        if isinstance(module, torch.nn.PReLU):
            module.__class__ = PRELU[impl]
    return net


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, spec = text.partition(":")
    v = dict(DEFAULTS)
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key not in DEFAULTS:
            raise SystemExit(f"variant {name}: unknown key {key!r} (known: {', '.join(DEFAULTS)})")
        v[key] = value
    return name, v


def run_variant(name: str, v: dict, steps: int, warmup: int, profile_path: str | None,
                dev: torch.device) -> dict:
    torch.backends.cudnn.benchmark = v["bench"] == "1"
    torch._dynamo.reset()
    torch.manual_seed(0)
    batch = int(v["batch"])
    cl = v["cl"] == "1"
    n_images = max(min(4096, 4 * batch), batch * max(steps, warmup))
    split = tdata.ArraySplit(torch.rand(n_images, 1, 150, 150, device=dev),
                             torch.randint(0, 3, (n_images,), device=dev))
    kwargs = yaml.safe_load(v["kwargs"]) or {}
    if v["model"].startswith("densenet_cbam"):
        kwargs.setdefault("pool_first", v["pool"] == "1")
    net = create_model(v["model"], **kwargs).to(dev)
    swap_prelu(net, v["prelu"])
    if cl:
        net = net.to(memory_format=torch.channels_last)
    opt = loop.make_optimizer(net.parameters(), lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    ema = loop.EMA(net, float(v["ema"])) if float(v["ema"]) > 0 else None
    train_net = net if v["compile"] == "off" else torch.compile(
        net, mode=None if v["compile"] == "default" else v["compile"])
    sync = v["sync"] == "1" and dev.type == "cuda"
    hook = (lambda step: torch.cuda.synchronize()) if sync else None

    def epoch(index: int, n: int, **extra) -> dict:
        batches = tdata.array_batches(split, batch_size=batch, seed=0, epoch=index, augment="d4")
        return loop.train_one_epoch(
            train_net, itertools.islice(batches, n), n_steps=n, optimizer=opt, scheduler=sched,
            loss_fn=loop.make_loss(0.1), subtract=0.5, device=dev, amp=v["amp"],
            channels_last=cl, ema=ema, grad_clip=1.0, desc=name, show_progress=False,
            step_hook=hook, **extra)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    warm = epoch(0, warmup)
    warm_s = time.perf_counter() - t0
    timed = [epoch(1 + r, steps) for r in range(2)]
    best = min(timed, key=lambda s: s["seconds"])
    row = {"variant": name, **v, "warmup_s": round(warm_s, 1),
           "img_per_s": round(best["images"] / best["seconds"], 1),
           "img_per_s_runs": [round(s["images"] / s["seconds"], 1) for s in timed],
           "skipped_steps": sum(s["skipped_steps"] for s in [warm, *timed]),
           "steps": warmup + 2 * steps,
           "peak_gib": (round(torch.cuda.max_memory_allocated() / 2**30, 2)
                        if dev.type == "cuda" else None)}
    print(json.dumps(row), flush=True)
    if profile_path:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            epoch(9, 3)
        table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40,
                                          max_name_column_width=90)
        with open(profile_path, "a") as f:
            f.write(f"\n===== {name} {v} =====\n{table}\n")
        row["profile"] = profile_path
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--profile", nargs="*", default=[], help="variant names to profile")
    ap.add_argument("--profile-out", default="train_step_profile.txt")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of the script itself")
    a = ap.parse_args()
    rows = []
    for text in a.variants:
        name, v = parse_variant(text)
        try:
            rows.append(run_variant(name, v, a.steps, a.warmup,
                                    a.profile_out if name in a.profile else None,
                                    torch.device(a.device)))
        except Exception as e:  # one broken setting must not cost the others
            print(json.dumps({"variant": name, **v, "error": f"{type(e).__name__}: {e}"[:500]}),
                  flush=True)
            rows.append({"variant": name, **v, "error": f"{type(e).__name__}: {e}"[:2000]})
        if a.out:
            with open(a.out, "w") as f:
                json.dump({"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
                           "torch": torch.__version__,
                           "card": torch.cuda.get_device_name() if a.device == "cuda" else "cpu",
                           "rows": rows}, f, indent=2)
    print(f"\n{'variant':<16}{'img/s':>10}{'warm s':>8}{'skipped':>9}{'GiB':>7}")
    for r in rows:
        print(f"{r['variant']:<16}{r.get('img_per_s', 'ERR'):>10}{r.get('warmup_s', '-'):>8}"
              f"{r.get('skipped_steps', '-'):>9}{str(r.get('peak_gib', '-')):>7}")


if __name__ == "__main__":
    main()
