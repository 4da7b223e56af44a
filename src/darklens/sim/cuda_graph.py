"""Replay the whole fused render of a batch as one CUDA graph.

Why: the fused kernels render a 150x150 image in ~1.4 us, but drawing its parameters is ~600
small torch ops on (B,) vectors (hashing keys, ~130 parameters); launched one by one from
Python they took ~13 ms per batch whatever its size, so at batch 2,048 they, not the pixels,
set the rate. Captured once per (config, batch size, device), a batch is four copies in (seed
words, split, class, index), one replay and two copies out.

Replays are bit-identical to the uncaptured path: the same kernels run on the same inputs.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable

import torch

Tensor = torch.Tensor
_MAX_GRAPHS = 4  # each holds its batch's buffers (~1 GB at 2,048 x 150 x 150)


class GraphedRender:
    """``body(*inputs) -> (images, params)`` captured for inputs shaped like ``examples``.

    ``body`` must only launch device work (no host copies or syncs) and depend on nothing but
    its tensor inputs, which are copied into the graph's own buffers at each call.
    """

    def __init__(self, body: Callable, examples: list[Tensor], device: torch.device):
        self.inputs = [torch.zeros_like(e, device=device) for e in examples]
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up: Triton compiles at first launch, uncapturable
            body(*self.inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: other threads' CUDA calls (the NCCL watchdog under DDP, say) must not
        # invalidate the capture
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            images, params = body(*self.inputs)
            self.names = list(params)
            self.block = torch.stack([params[k] for k in self.names])  # one copy out, not 130
        self.images = images

    def __call__(self, *values: Tensor):
        for buffer, value in zip(self.inputs, values, strict=True):
            buffer.copy_(value)
        self.graph.replay()
        # copies: the next replay overwrites the graph's own buffers
        return self.images.clone(), dict(zip(self.names, self.block.clone().unbind(0)))


_GRAPHS: OrderedDict = OrderedDict()


def graphed(key, body: Callable, examples: list[Tensor], device: torch.device) -> Callable:
    """The cached graph for ``key`` (captured on first use; least recently used evicted).

    If capturing fails (a driver or PyTorch version that refuses part of the work), the batch
    runs uncaptured: the same kernels and bits, only slower. One warning says so.
    """
    if key in _GRAPHS:
        _GRAPHS.move_to_end(key)
    else:
        try:
            _GRAPHS[key] = GraphedRender(body, examples, device)
        except RuntimeError as e:
            warnings.warn(f"CUDA graph capture failed ({e}); simulating without it", stacklevel=3)
            _GRAPHS[key] = body
        while len(_GRAPHS) > _MAX_GRAPHS:
            _GRAPHS.popitem(last=False)
    return _GRAPHS[key]


def clear() -> None:
    """Drop every cached graph and the GPU memory it holds."""
    _GRAPHS.clear()
