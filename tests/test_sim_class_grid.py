"""The ``class_grid`` knob: PyLensing's per-class parameter grids (preset ``pylensing``)."""

import pytest
import torch

from darklens.errors import DarklensError
from darklens.sim import simulate_batch
from darklens.sim.presets import get_config

SMALL = {"image_size": "24", "pixel_scale": "0.2", "n_subhalos": "3"}
# parameters that are one draw each (gamma1 = gamma cos 2phi and the like combine two draws)
GRIDDED = ("lens_phi", "lens_light_amp", "source_amp", "vort_angle")


def _params(preset, labels, overrides=None, seed=0, start=0):
    labels = torch.tensor(labels)
    _, _, p = simulate_batch(preset, labels=labels, seed=seed, start_index=start,
                             overrides={**SMALL, **(overrides or {})})
    return labels, p


def test_each_class_draws_from_its_own_k_values():
    labels, p = _params("pylensing", [0, 1, 2] * 100)
    for name in GRIDDED:
        per_class = [set(p[name][labels == k].tolist()) for k in range(3)]
        if name == "vort_angle":  # only vort images carry a vortex
            assert 1 < len(per_class[2]) <= 5
            continue
        assert all(1 < len(v) <= 5 for v in per_class), (name, per_class)
        assert not (per_class[0] & per_class[1]) and not (per_class[1] & per_class[2])
    # substructure positions stay fresh per image (PyLensing draws them per image too)
    sphere = labels == 1
    assert len(set(p["sub0_center_x"][sphere].tolist())) == int(sphere.sum())


def test_grid_is_shared_by_splits_and_seeds():
    a_labels, a = _params("pylensing", [0, 1, 2] * 40, seed=1)
    b_labels, b = _params("pylensing", [0, 1, 2] * 40, seed=7, start=1000)
    for name in ("lens_phi", "source_amp"):
        for k in range(3):
            union = set(a[name][a_labels == k].tolist()) | set(b[name][b_labels == k].tolist())
            assert len(union) <= 5, (name, k, union)
    # combinations of two gridded draws: at most 5 x 5 values per class
    assert len(set(a["gamma1"][a_labels == 0].tolist())) <= 25


def test_grid_seed_changes_the_values():
    labels, a = _params("pylensing", [0] * 50)
    _, b = _params("pylensing", [0] * 50, {"class_grid_seed": "1"})
    assert set(a["gamma1"].tolist()) != set(b["gamma1"].tolist())


def test_class_grid_zero_is_the_physics_default():
    labels, p = _params("model_a", [0, 1, 2] * 30)
    assert len(set(p["gamma1"][labels == 0].tolist())) == 30
    _, q = _params("model_a", [0, 1, 2] * 30, {"class_grid": "0"})
    assert all(torch.equal(p[k], q[k]) for k in p)


# Draws of the code before class_grid existed (commit f275f9f), bit for bit: adding the knob
# must not move a single default draw.
_BEFORE = {
    "lens_light_amp": ["0x1.9eef1c0000000p-2", "0x1.b65b360000000p-4", "0x1.ec1acc0000000p-2"],
    "gamma1": ["0x1.177c7e0000000p-6", "-0x1.c29a3e0000000p-7", "-0x1.79dd760000000p-5"],
    "source_center_x": ["-0x1.e8a72a0000000p-1", "-0x1.01a1920000000p+0",
                        "-0x1.56c0aa0000000p-2"],
    "vort_angle": ["0x1.72763a0000000p-2", "0x1.1245c00000000p+1", "0x1.31dfe20000000p-2"],
    "sub0_center_x": ["0x1.ac7d700000000p-2", "0x1.008ab20000000p-1", "-0x1.6291720000000p+0"],
}


def test_default_draws_are_those_of_the_code_before_class_grid():
    _, p = _params("model_a", [0, 1, 2])
    assert {k: [v.hex() for v in p[k].tolist()] for k in _BEFORE} == _BEFORE


def test_pylensing_substructure_strength():
    # each of PyLensing's 25 point masses has einstein_radius sqrt(0.01)/25 * 1.2"
    c = get_config("pylensing")
    _, p = _params("pylensing", [1], {"n_subhalos": "25"})
    assert c.class_grid == 5 and c.theta_E == (1.2, 1.2)
    total = sum(p[f"sub{i}_theta_E"] ** 2 for i in range(25))
    assert torch.allclose(total, torch.tensor([25 * (0.1 / 25 * 1.2) ** 2]), rtol=1e-4)


def test_grid_table_outlives_other_configs():
    # a captured CUDA graph reads the table by address: it must never be freed or replaced
    from darklens.sim.simulator import class_grid_table

    config = get_config("pylensing", SMALL)
    table = class_grid_table(config, torch.device("cpu"))
    for k in range(40):
        class_grid_table(get_config("pylensing", {"class_grid_seed": str(k + 1)}), "cpu")
    assert class_grid_table(config, torch.device("cpu")) is table
    assert class_grid_table(get_config("model_a"), "cpu") is None


def test_bad_class_grid():
    with pytest.raises(DarklensError, match="class_grid"):
        get_config("model_a", {"class_grid": "-1"})


def test_writing_a_class_grid_dataset_warns(tmp_path):
    import warnings

    from darklens.sim import simulate_dataset

    with pytest.warns(UserWarning, match="without seeing any substructure"):
        simulate_dataset(tmp_path / "pyl", preset="pylensing", n_train=1, n_val=1, n_test=0,
                         seed=0, device="cpu", progress=False, overrides=SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # model_a: no such warning
        simulate_dataset(tmp_path / "a", preset="model_a", n_train=1, n_val=1, n_test=0,
                         seed=0, device="cpu", progress=False, overrides=SMALL)
