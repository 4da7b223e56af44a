"""Inputs a user plausibly gets wrong are refused up front with a line that names the setting
(simulate's physics and counts, train's flags), and 8-bit images are flagged at predict time."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from train_fixtures import write_dataset

from darklens.errors import DarklensError
from darklens.sim.presets import get_config, list_presets
from darklens.train import build_config, train


@pytest.mark.parametrize("key, value, message", [
    ("theta_E", "[-1, -1]", "theta_E: Einstein radius must be > 0"),
    ("sub_mass_fraction", "[-0.1, 0.1]", "sub_mass_fraction: must be >= 0"),
    ("shear_gamma", "[0, 1.5]", "shear_gamma: shear magnitude must be < 1"),
    ("sky", "-1", "sky: noise levels must be >= 0"),
    ("lens_light_n", "[0.1, 0.1]", "lens_light_n: Sersic index"),
])
def test_impossible_physics_is_refused(key, value, message):
    with pytest.raises(DarklensError, match=f"--set {message}"):
        get_config("model_a", {key: value})


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_passes_the_checks(preset):
    get_config(preset, {})


def test_simulate_refuses_zero_images_and_zero_batch(tmp_path):
    from darklens.sim import simulate_dataset

    with pytest.raises(DarklensError, match="all 0"):
        simulate_dataset(tmp_path / "a", preset="model_a", n_train=0, n_val=0, device="cpu")
    with pytest.raises(DarklensError, match="--batch: must be >= 1, got 0"):
        simulate_dataset(tmp_path / "b", preset="model_a", n_train=1, batch=0, device="cpu")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("args, overrides, message", [
    ({"epochs": 1}, {"epochs": "2"}, "--epochs 1 and --set epochs=2 disagree"),
    ({"lr": 1e-3}, {"lr": "2e-3"}, "--lr 0.001 and --set lr=2e-3 disagree"),
    ({"model": "resnet_tiny"}, {"model": "densenet_cbam_tiny"}, "--model resnet_tiny and"),
    ({}, {"val_fraction": "2"}, r"val_fraction=2: expected a number in \(0, 1\)"),
    ({"batch": 0}, {}, r"batch_size=0 \(--batch or --set\): must be positive"),
    ({"seed": 1}, {"seed": "3"}, "--seed 1 and --set seed=3 disagree"),
])
def test_train_flags_that_contradict_or_cannot_work(args, overrides, message):
    kwargs = {"recipe": "fast", "model": "resnet_tiny", "epochs": None, "batch": None,
              "lr": None, "seed": 0, **args}
    with pytest.raises(DarklensError, match=message):
        build_config(overrides=overrides, **kwargs)
    # the same value twice is no contradiction
    build_config(recipe="fast", model="resnet_tiny", epochs=2, batch=None, lr=None, seed=0,
                 overrides={"epochs": "2", "model": "resnet_tiny"})
    # nor is a --set beside a flag the CLI passes with its default (--model, --recipe, --seed)
    config = build_config(recipe="fast", model="densenet_cbam", epochs=None, batch=None,
                          lr=None, seed=0, overrides={"model": "resnet_tiny", "seed": "4"})
    assert (config.model, config.seed) == ("resnet_tiny", 4)


def test_a_cpu_run_records_that_autocast_was_off(tmp_path):
    import yaml

    data = write_dataset(tmp_path / "d", n_train=12, n_val=4)
    run = train(str(data), out=tmp_path / "run", model="resnet_tiny", recipe="fast", epochs=1,
                batch=16, device="cpu", resume=False, seed=0, allow_pickle=False,
                overrides={"bn_recalib_batches": "1"})
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["amp"] == "bf16" and config["amp_in_effect"] == "none"


def test_predict_warns_about_images_not_scaled_to_unit_range():
    from darklens.evaluation.inference import predict_proba
    from darklens.models import create_model

    net = create_model("resnet_tiny")
    meta = {"preprocessing": {"subtract": 0.5}, "classes": ["no", "sphere", "vort"]}
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32)).astype(np.uint8)
    with pytest.warns(UserWarning, match=r"pixel values in \[0, 25\d\].*rescale"):
        predict_proba(net, meta, images, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predict_proba(net, meta, images / 255.0, progress=False)
