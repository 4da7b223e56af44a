"""Where torch.compile breaks training of a model: compiled vs eager, one step, per setting.

For each (autocast, memory format) it runs forward + backward through the eager and the
compiled module on the same batch and reports the output difference, how many parameter
gradients are non-finite (and the first such parameter in module order), and the steady
forward + backward images/s of both.

    python benchmarks/compile_probe.py --model densenet_cbam --batch 256
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import torch

from darklens.models import create_model


def step(net, x, y, amp):
    bf16 = amp == "bf16"
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    net.zero_grad(set_to_none=True)
    with ctx:
        out = net(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
    loss.backward()
    # compiled modules name parameters "_orig_mod.<name>": key both by the eager name
    return out.detach().float(), {n.removeprefix("_orig_mod."): p.grad.detach().clone()
                                  for n, p in net.named_parameters() if p.grad is not None}


def rate(net, x, y, amp, iters=10):
    for _ in range(2):
        step(net, x, y, amp)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        step(net, x, y, amp)
    torch.cuda.synchronize()
    return x.shape[0] * iters / (time.perf_counter() - t0)


def probe(model, batch, amp, channels_last, mode):
    torch.manual_seed(0)
    torch._dynamo.reset()
    net = create_model(model).cuda().train()
    x = torch.rand(batch, 1, 150, 150, device="cuda") - 0.5
    y = torch.randint(0, 3, (batch,), device="cuda")
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    state = {k: v.clone() for k, v in net.state_dict().items()}  # BN running stats move
    ref_out, ref_grads = step(net, x, y, amp)
    net.load_state_dict(state)
    compiled = torch.compile(net, mode=mode)
    t0 = time.perf_counter()
    out, grads = step(compiled, x, y, amp)
    compile_s = time.perf_counter() - t0
    bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
    rel = max(float((grads[n] - ref_grads[n]).norm() / (ref_grads[n].norm() + 1e-12))
              for n in grads if n not in bad) if len(bad) < len(grads) else None
    row = {"amp": amp, "channels_last": channels_last, "mode": mode,
           "compile_s": round(compile_s, 1),
           "out_max_abs_diff": float((out - ref_out).abs().max()),
           "out_finite": bool(torch.isfinite(out).all()),
           "nonfinite_grads": len(bad), "grads": len(grads),
           "first_nonfinite": bad[0] if bad else None, "max_rel_grad_diff_finite": rel,
           "eager_img_per_s": round(rate(net, x, y, amp), 1),
           "compiled_img_per_s": round(rate(compiled, x, y, amp), 1) if not bad else None}
    print(json.dumps(row), flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="densenet_cbam")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--settings", default="bf16:cl,none:cl,bf16:nchw",
                    help="comma list of amp:layout (amp bf16|none, layout cl|nchw)")
    ap.add_argument("--mode", default="default", help="torch.compile mode")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    rows = []
    for setting in a.settings.split(","):
        amp, layout = setting.split(":")
        rows.append(probe(a.model, a.batch, amp, layout == "cl",
                          None if a.mode == "default" else a.mode))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
                       "model": a.model, "batch": a.batch, "torch": torch.__version__,
                       "card": torch.cuda.get_device_name(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
