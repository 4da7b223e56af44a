"""Counter-based random numbers: block draws equal single draws bit for bit."""

import torch

from darklens.sim.presets import get_config
from darklens.sim.rng import image_keys, uniform, uniform_block
from darklens.sim.simulator import draw_params


def test_uniform_block_columns_equal_single_stream_draws():
    keys = image_keys(123, 0, torch.tensor([0, 1, 2, 2]), torch.tensor([0, 5, 7, 2**40]))
    block = uniform_block(keys, 9)
    for j in range(9):
        assert torch.equal(block[:, j], uniform(keys, j + 1))
    assert ((block > 0) & (block < 1)).all()


def test_draw_params_fits_in_counted_streams():
    # draw_params raises if it asks for a stream beyond _n_streams (axion length, msun masses)
    for preset, sets in (("model_a", {}), ("model_i", {}), ("model_a", {"n_subhalos": "3"})):
        config = get_config(preset, sets)
        keys = image_keys(0, 0, torch.tensor([0, 1, 2]), torch.arange(3))
        params = draw_params(config, keys, torch.tensor([0, 1, 2]))
        assert all(torch.isfinite(v).all() for v in params.values())
        assert params["theta_E"].shape == (3,)
