"""``--set init_from=...``: fine-tuning starts from a checkpoint's weights, checked and recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from train_fixtures import write_dataset

from darklens.errors import DarklensError
from darklens.train import train

TINY = {"model": "densenet_cbam_tiny", "batch": 32, "device": "cpu", "allow_pickle": False}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DARKLENS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ft") / "ds", n_train=32, n_val=12)


@pytest.fixture(scope="module")
def source_run(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("src") / "run"
    return train(str(tiny_data), out=out, recipe="fast", epochs=2, lr=3e-3, resume=False,
                 seed=0, overrides={"ema_decay": "0"}, **TINY)


def _parameters(weights: Path, model) -> dict[str, torch.Tensor]:
    """The learnable tensors of a checkpoint (BN running statistics move without any step)."""
    names = {n for n, _ in model.named_parameters()}
    return {k: v for k, v in load_file(str(weights)).items() if k in names}


def test_fine_tuning_starts_model_and_ema_from_the_checkpoint(source_run, tiny_data, tmp_path):
    from darklens.models import create_model

    # lr 1e-12: the weights cannot move, so the run's weights are where it started. The EMA
    # is on: had it copied the model before the checkpoint was loaded, it would hold a blend
    # with the random init of seed 1.
    run = train(str(tiny_data), out=tmp_path / "ft", recipe="fast", epochs=1, lr=1e-12,
                resume=False, seed=1,
                overrides={"init_from": str(source_run), "ema_decay": "0.9"}, **TINY)
    model = create_model("densenet_cbam_tiny")
    start = _parameters(source_run / "best.safetensors", model)
    end = _parameters(run / "last.safetensors", model)
    assert start.keys() == end.keys() and len(start) > 10
    for key in start:
        torch.testing.assert_close(end[key], start[key], rtol=0, atol=1e-6, msg=key)

    source_meta = json.loads((source_run / "best.json").read_text())
    init = yaml.safe_load((run / "config.yaml").read_text())["data_info"]["init"]
    assert init["from"] == str(source_run)
    assert init["weights_sha256"] == source_meta["weights_sha256"]


def test_fine_tuning_a_shipped_float16_model(tiny_data, tmp_path):
    run = train(str(tiny_data), out=tmp_path / "ft", recipe="fast", epochs=1, lr=1e-3,
                resume=False, seed=0, model="resnet18_slim", batch=32, device="cpu",
                allow_pickle=False, overrides={"init_from": "pretrained:resnet18_slim_model_a"})
    from darklens.checkpoint import load_checkpoint

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["init_from"] == "pretrained:resnet18_slim_model_a"
    _, shipped = load_checkpoint("pretrained:resnet18_slim_model_a")
    assert config["data_info"]["init"]["weights_sha256"] == shipped["weights_sha256"]
    assert json.loads((run / "last.json").read_text())["model"] == "resnet18_slim"


@pytest.mark.parametrize("change, message", [
    ({"model": "resnet_tiny"}, "holds model 'densenet_cbam_tiny'.*--model densenet_cbam_tiny"),
    ({"overrides": {"subtract": "0"}}, r"pixel - 0.5, this run's are pixel - 0; "
                                       r"pass --set subtract=0.5"),
    ({"overrides": {"model_kwargs": "{mid_chans: 4}"}}, "model_kwargs"),
])
def test_a_checkpoint_of_another_model_or_input_is_refused_before_anything_is_written(
        source_run, tiny_data, tmp_path, change, message):
    args = {**TINY, **{k: v for k, v in change.items() if k != "overrides"}}
    overrides = {"init_from": str(source_run), **change.get("overrides", {})}
    with pytest.raises(DarklensError, match=message):
        train(str(tiny_data), out=tmp_path / "ft", recipe="fast", epochs=1, resume=False,
              seed=0, overrides=overrides, **args)
    assert not (tmp_path / "ft").exists()


def test_a_missing_checkpoint_is_a_one_line_error(tiny_data, tmp_path):
    with pytest.raises(DarklensError, match="no_such_run"):
        train(str(tiny_data), out=tmp_path / "ft", recipe="fast", epochs=1, resume=False,
              seed=0, overrides={"init_from": str(tmp_path / "no_such_run")}, **TINY)
    assert not (tmp_path / "ft").exists()
