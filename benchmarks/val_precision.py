"""How much a checkpoint's predictions depend on the arithmetic they are computed in (CPU).

Session 6 found a densenet_cbam run that validated at 0.599 accuracy under bf16 autocast while
``darklens evaluate`` (fp32) scored its weights 0.444. This script takes such a checkpoint apart
on simulated ``model_a`` images made on this CPU:

* ``splits``: accuracy / macro AUC in fp32 on the run's own validation images (``simulate_val``:
  seed ``train seed + 10000``, split val, class k at indices ``k * sim_val_per_class + i``) and
  on the benchmark's test split (``--test-seed``);
* ``amp``: the first images of that validation set in fp32 and under CPU bf16 autocast;
* ``input``: fp32 with the input rounded to bf16, or jittered by one bf16 step (is it the input?);
* ``layers``: ||fp32 - bf16|| / ||fp32|| of every leaf module's output;
* ``recalib``: BN statistics re-estimated in fp32 on fresh ``sim:model_a`` batches, as
  ``darklens train`` now does before validating, then scored in fp32 and bf16.

    PYTHONPATH=src python benchmarks/val_precision.py \\
        benchmarks/results/checkpoints/densenet_cbam_sim_bf16val_h200.json --n 150
    PYTHONPATH=src python benchmarks/val_precision.py pretrained:densenet_cbam_model_a \\
        --parts recalib --small-split test --n-small 200

The checkpoint is the best.* of session 6's call 3 (``train_accuracy_sim_pretrained_h200.json``),
kept in the repository so that these figures can be re-run.
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from darklens.checkpoint import load_checkpoint
from darklens.sim import simulate_batch
from darklens.training import data as tdata
from darklens.training import loop

CPU = torch.device("cpu")


def images(seed: int, split: str, n: int, stride: int) -> torch.Tensor:
    """n images per class, class k at indices k * stride + i (stride 0: i), minus 0.5."""
    return torch.cat([simulate_batch("model_a", labels=torch.full((n,), k), seed=seed,
                                     split=split, indices=torch.arange(n) + k * stride)[0]
                      for k in range(3)]) - 0.5


def probs(net: torch.nn.Module, x: torch.Tensor, bf16: bool = False) -> np.ndarray:
    net.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return torch.cat([net(b).float().softmax(1) for b in x.split(50)]).double().numpy()


def report(tag: str, p: np.ndarray) -> None:
    y = np.arange(3).repeat(len(p) // 3)
    auc = roc_auc_score(y, p, multi_class="ovr")
    print(f"{tag}: acc {(p.argmax(1) == y).mean():.3f} macro AUC {auc:.3f} "
          f"pred counts {np.bincount(p.argmax(1), minlength=3)}", flush=True)


def layer_drift(net: torch.nn.Module, x: torch.Tensor) -> None:
    """Relative fp32-vs-bf16 difference of every leaf module's output (modules called several
    times are compared over all their calls)."""
    outs: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_hook(
        lambda m, i, o, name=name: outs.setdefault(name, []).append(o.detach().float()))
        for name, m in net.named_modules() if name and not list(m.children())]
    probs(net, x)
    probs(net, x, bf16=True)
    for h in hooks:
        h.remove()
    for name, v in outs.items():
        half = len(v) // 2
        a = torch.cat([t.flatten() for t in v[:half]])
        b = torch.cat([t.flatten() for t in v[half:]])
        print(f"  {name:40s} {((a - b).norm() / a.norm().clamp_min(1e-12)).item():.4f}")


def recalibrated(net: torch.nn.Module, steps: int) -> torch.nn.Module:
    batches = tdata.sim_batches("model_a", batch_size=64, steps=steps, seed=77_777, epoch=0,
                                rank=0, device=CPU, overrides={})
    return loop.recalibrate_bn(copy.deepcopy(net), batches, subtract=0.5, device=CPU,
                               amp="none", channels_last=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="run folder, checkpoint .json or pretrained:<name>")
    ap.add_argument("--n", type=int, default=150, help="images per class for 'splits'")
    ap.add_argument("--n-small", type=int, default=100, help="per class for the other parts")
    ap.add_argument("--test-seed", type=int, default=2026)
    ap.add_argument("--recalib-steps", type=int, default=16)
    ap.add_argument("--parts", default="splits,amp,input,layers,recalib")
    ap.add_argument("--small-split", default="val", choices=["val", "test"],
                    help="images of the other parts: the run's val images or the test split")
    a = ap.parse_args()
    torch.set_num_threads(2)
    net, meta = load_checkpoint(a.checkpoint)
    cfg = meta["config"]
    val_seed, stride = int(cfg["seed"]) + 10_000, int(cfg["sim_val_per_class"])
    parts = a.parts.split(",")
    print(f"checkpoint {a.checkpoint} (model {meta['model']}, its recorded metrics: accuracy "
          f"{meta['metrics'].get('accuracy')}, macro AUC {meta['metrics'].get('auc_macro')})")
    if "splits" in parts:
        report(f"fp32, the run's val images (seed {val_seed}), {a.n}/class",
               probs(net, images(val_seed, "val", a.n, stride)))
        report(f"fp32, test split seed {a.test_seed}, {a.n}/class",
               probs(net, images(a.test_seed, "test", a.n, 0)))
    x = (images(val_seed, "val", a.n_small, stride) if a.small_split == "val"
         else images(a.test_seed, "test", a.n_small, 0))
    if "amp" in parts:
        report(f"fp32, first {a.n_small}/class of the {a.small_split} images", probs(net, x))
        report("bf16 autocast, same images", probs(net, x, bf16=True))
    if "input" in parts:
        report("fp32, input rounded to bf16", probs(net, x.bfloat16().float()))
        jitter = (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) - 0.5) * 2**-9
        report("fp32, input + uniform noise of one bf16 step at 0.5", probs(net, x + jitter))
    if "layers" in parts:
        print("||fp32 - bf16|| / ||fp32|| per leaf module (30 of those images):")
        layer_drift(net, x[::10][:30])
    if "recalib" in parts:  # (under bf16 on a 2-core CPU this takes over 20 minutes: fp32 only)
        m = recalibrated(net, a.recalib_steps)
        tag = f"BN re-estimated in fp32 ({a.recalib_steps} x 64 fresh images)"
        report(f"{tag}, scored fp32", probs(m, x))
        report(f"{tag}, scored bf16", probs(m, x, bf16=True))


if __name__ == "__main__":
    main()
