"""Replay the whole fused render of a batch as one CUDA graph.

Why: the fused kernels render a 150x150 image in ~1.4 us, but drawing its parameters is ~600
small torch ops on (B,) vectors (hashing keys, ~130 parameters); launched one by one from
Python they took ~13 ms per batch whatever its size, so at batch 2,048 they, not the pixels,
set the rate. Captured once per (config, seed, batch size), a batch is three copies in, one
replay and two copies out.

Replays are bit-identical to the uncaptured path: the same kernels run on the same inputs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

Tensor = torch.Tensor
_MAX_GRAPHS = 4  # each holds its batch's buffers (~1 GB at 2,048 x 150 x 150)


class GraphedRender:
    """``body(split, labels, indices) -> (images, params)`` captured at a fixed batch size.

    ``body`` must only launch device work (no host copies or syncs) and depend on nothing but
    its three (B,) int64 inputs.
    """

    def __init__(self, body: Callable, batch: int, device: torch.device):
        self.inputs = [torch.zeros(batch, dtype=torch.int64, device=device) for _ in range(3)]
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up: Triton compiles at first launch, uncapturable
            body(*self.inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            images, params = body(*self.inputs)
            self.names = list(params)
            self.block = torch.stack([params[k] for k in self.names])  # one copy out, not 130
        self.images = images

    def __call__(self, split: Tensor, labels: Tensor, indices: Tensor):
        for buffer, value in zip(self.inputs, (split, labels, indices)):
            buffer.copy_(value)
        self.graph.replay()
        # copies: the next replay overwrites the graph's own buffers
        return self.images.clone(), dict(zip(self.names, self.block.clone().unbind(0)))


_GRAPHS: OrderedDict = OrderedDict()


def graphed(key, body: Callable, batch: int, device: torch.device) -> GraphedRender:
    """The cached graph for ``key`` (captured on first use; least recently used evicted)."""
    if key in _GRAPHS:
        _GRAPHS.move_to_end(key)
    else:
        _GRAPHS[key] = GraphedRender(body, batch, device)
        while len(_GRAPHS) > _MAX_GRAPHS:
            _GRAPHS.popitem(last=False)
    return _GRAPHS[key]
