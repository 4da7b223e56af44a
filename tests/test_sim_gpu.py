"""CUDA simulator checks (run with -m gpu on a machine with a GPU)."""

import pytest
import torch

from darklens.sim.presets import get_config
from darklens.sim.simulator import render

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")]


@pytest.mark.parametrize("compiled", [False, True])
def test_cuda_matches_cpu_and_is_batch_invariant(compiled):
    config = get_config("model_a", {"image_size": "64", "noise": "false"})
    labels, indices = torch.arange(96) % 3, torch.arange(96)
    cpu, _ = render(config, 1, 0, labels, indices, "cpu")
    gpu, _ = render(config, 1, 0, labels, indices, "cuda", compiled=compiled)
    # different transcendental implementations: close, not bit-equal
    assert (gpu.cpu() - cpu).abs().max() < 1e-3
    half, _ = render(config, 1, 0, labels[:48], indices[:48], "cuda", compiled=compiled)
    assert torch.equal(half, gpu[:48])
