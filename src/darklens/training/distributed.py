"""DDP under ``torchrun``: read RANK/WORLD_SIZE, pick the backend, reduce across ranks.

``torchrun --nproc_per_node N -m darklens train ...`` sets the environment; a plain run has no
WORLD_SIZE and stays single-process with no process group at all.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``; ``local_rank`` picks its GPU."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (NCCL on GPUs, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(value: float, info: DistInfo, device: torch.device) -> float:
    """Mean of a Python float over ranks (train loss for the log)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Rank 0's decision (e.g. "time budget spent: stop") for every rank."""
    return bool(broadcast_int(int(flag), info, device))


def broadcast_int(value: int, info: DistInfo, device: torch.device) -> int:
    """Rank 0's integer (e.g. "epochs that fit the budget") for every rank."""
    if not info.enabled:
        return value
    t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. "my compile failed")."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        # Objects in reference cycles (e.g. a failed trial step's traceback and autograd graph,
        # train._try_compile) must go while the process group and the interpreter are whole:
        # freed at interpreter exit instead, gloo aborted ("terminate called without an active
        # exception") in 2 of 50 runs of tests/scripts/ddp_compile_fault.py, 0 of 60 with this
        # (separate runs on the 2-core CPU; benchmarks/repeat_ddp_fault.sh counts them).
        gc.collect()
        dist.destroy_process_group()
