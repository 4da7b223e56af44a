"""CUDA simulator checks (run with -m gpu on a machine with a GPU)."""

import pytest
import torch

from darklens.sim.presets import get_config
from darklens.sim.simulator import render, simulate_batch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")]


@pytest.mark.parametrize("backend", ["eager", "compile", "fused"])
def test_cuda_matches_cpu_and_is_batch_invariant(backend):
    config = get_config("model_a", {"image_size": "64", "noise": "false"})
    labels, indices = torch.arange(96) % 3, torch.arange(96)
    cpu, _ = render(config, 1, 0, labels, indices, "cpu")
    gpu, _ = render(config, 1, 0, labels, indices, "cuda", backend)
    # different transcendental implementations: close, not bit-equal
    assert (gpu.cpu() - cpu).abs().max() < 1e-3
    half, _ = render(config, 1, 0, labels[:48], indices[:48], "cuda", backend)
    assert torch.equal(half, gpu[:48])


def test_fused_noise_matches_eager_cuda():
    # with noise: eager CUDA and the fused kernels hash the same bits per pixel
    config = get_config("model_a")
    labels, indices = torch.arange(30) % 3, torch.arange(30)
    eager, _ = render(config, 2, 0, labels, indices, "cuda", "eager")
    fused, _ = render(config, 2, 0, labels, indices, "cuda", "fused")
    assert (eager - fused).abs().max() < 1e-4


def test_auto_is_fused_on_cuda():
    images, _, _ = simulate_batch("model_a", [0, 1, 2], device="cuda")
    fused, _ = render(get_config("model_a"), 0, 0, torch.tensor([0, 1, 2]),
                      torch.arange(3), "cuda", "fused")
    assert torch.equal(images, fused)


def test_cuda_graph_replays_are_bit_identical_and_fresh():
    config = get_config("model_a")
    labels = torch.tensor([0, 1, 2, 1, 2, 0, 1])
    plain, p_plain = render(config, 4, 1, labels, torch.arange(7), "cuda", "fused",
                            cuda_graph=False)
    for _ in range(2):  # the first call captures, the second replays
        graphed, p_graphed = render(config, 4, 1, labels, torch.arange(7), "cuda", "fused")
        assert torch.equal(graphed, plain)
        assert all(torch.equal(p_graphed[k], p_plain[k]) for k in p_plain)
    # new inputs through the same graph: new images, and the earlier result is not overwritten
    other, _ = render(config, 4, 1, labels, torch.arange(7) + 100, "cuda", "fused")
    assert not torch.equal(other, graphed)
    assert torch.equal(graphed, plain)


def test_class_grid_through_fused_graphs_matches_eager_cuda():
    # the grid table lives outside the captured graph: replays must read the same table
    import darklens.sim.simulator as S

    config = get_config("pylensing", {"image_size": "64"})
    labels = torch.arange(30) % 3
    eager, p_eager = render(config, 3, 0, labels, torch.arange(30), "cuda", "eager")
    for _ in range(2):  # capture, then replay
        graphed, p_graphed = render(config, 3, 0, labels, torch.arange(30), "cuda", "fused")
        assert all(torch.equal(p_graphed[k], p_eager[k]) for k in ("lens_phi", "source_amp"))
        assert (graphed - eager).abs().max() < 1e-4
    for k in range(40):  # other configs must not free the table a captured graph reads
        S.class_grid_table(get_config("pylensing", {"class_grid_seed": str(k + 1)}), "cuda")
    replay, p_replay = render(config, 3, 0, labels, torch.arange(30), "cuda", "fused")
    assert torch.equal(replay, graphed) and torch.equal(p_replay["lens_phi"], p_eager["lens_phi"])


def test_signal_map_through_the_cuda_graph_matches_uncaptured_and_eager():
    """render(with_signal=True) on CUDA: the graphed replay equals the uncaptured fused
    launches bit for bit, and the eager renderer to float rounding; the graph cache keeps the
    signal and plain renders apart."""
    config = get_config("model_a", {"image_size": "64"})
    labels, indices = torch.arange(24) % 3, torch.arange(24)
    plain, _ = render(config, 5, 0, labels, indices, "cuda", "fused")
    graphed, _ = render(config, 5, 0, labels, indices, "cuda", "fused", with_signal=True)
    launched, _ = render(config, 5, 0, labels, indices, "cuda", "fused", cuda_graph=False,
                         with_signal=True)
    eager, _ = render(config, 5, 0, labels, indices, "cuda", "eager", with_signal=True)
    assert graphed.shape == (24, 2, 64, 64) and torch.equal(graphed[:, :1], plain)
    assert torch.equal(graphed, launched)
    peak = float(eager[:, 1].abs().max())
    assert peak > 0 and float((graphed[:, 1] - eager[:, 1]).abs().max()) < 1e-4 * peak
    assert float(graphed[labels == 0, 1].abs().max()) == 0.0
