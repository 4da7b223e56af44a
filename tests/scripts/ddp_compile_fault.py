"""One DDP rank's torch.compile fails on the trial step; the other's works (run by torchrun).

    python -m torch.distributed.run --nproc_per_node 2 tests/scripts/ddp_compile_fault.py \\
        DATA OUT forward|backward

Rank 0 gets a "compiled" module that raises in its forward (before DDP's own forward runs) or
in its backward (before any gradient exists); rank 1 gets the eager module back, so its trial
passes. Every rank must reach the end of training (eagerly) instead of waiting forever in a
collective the other rank never joins.
"""

import os
import sys

import torch

from darklens import train as train_mod


class _FailsOnRank0(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, where: str):
        super().__init__()
        self.inner, self.where = inner, where

    def forward(self, x):
        if self.where == "forward":
            raise RuntimeError("inductor exploded in the forward")
        out = self.inner(x)

        def fail(grad):
            raise RuntimeError("inductor exploded in the backward")

        out.register_hook(fail)
        return out


def fake_compile(module, **kwargs):
    if int(os.environ["RANK"]) == 0:
        return _FailsOnRank0(module, sys.argv[3])
    return module


if __name__ == "__main__":
    torch.compile = fake_compile
    train_mod.train(sys.argv[1], out=sys.argv[2], model="densenet_cbam_tiny", device="cpu",
                    epochs=1, batch=32, overrides={"compile": "on", "bn_recalib_batches": "1"})
