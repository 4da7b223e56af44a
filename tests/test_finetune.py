"""``--set init_from=...``: fine-tuning starts from a checkpoint's weights, checked and recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from train_fixtures import MinuteClock, write_dataset

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
    """The shipped float16 weights load as float32 and are where the run starts."""
    from darklens.checkpoint import load_checkpoint

    run = train(str(tiny_data), out=tmp_path / "ft", recipe="fast", epochs=1, lr=1e-12,
                resume=False, seed=0, model="resnet18_slim", batch=32, device="cpu",
                allow_pickle=False,
                overrides={"init_from": "pretrained:resnet18_slim_model_a", "ema_decay": "0"})
    shipped_model, shipped = load_checkpoint("pretrained:resnet18_slim_model_a")
    end = load_file(str(run / "last.safetensors"))
    params = dict(shipped_model.named_parameters())
    assert len(params) > 20
    for key, value in params.items():
        assert end[key].dtype == torch.float32, key
        torch.testing.assert_close(end[key], value.detach(), rtol=0, atol=1e-6, msg=key)

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["init_from"] == "pretrained:resnet18_slim_model_a"
    assert config["data_info"]["init"]["weights_sha256"] == shipped["weights_sha256"]
    assert json.loads((run / "last.json").read_text())["model"] == "resnet18_slim"


def test_a_resumed_fine_tune_keeps_its_source_and_never_reloads_it(
        source_run, tiny_data, tmp_path, monkeypatch):
    import darklens.train as train_mod

    monkeypatch.setattr(train_mod, "time", MinuteClock())  # every epoch "takes" a minute
    args = dict(recipe="fast", epochs=3, seed=1, **TINY)
    fixed = {"init_from": str(source_run), "ema_decay": "0", "bn_recalib_batches": "1"}
    run = tmp_path / "ft"
    train(str(tiny_data), out=run, resume=False,
          overrides={**fixed, "time_limit_min": "1.5"}, **args)
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 2  # stopped after 2 of 3
    first = yaml.safe_load((run / "config.yaml").read_text())["data_info"]["init"]
    assert first["from"] == str(source_run)

    # the resumed piece continues from the run's own state: the source is not read again
    monkeypatch.setattr(train_mod, "_init_weights", lambda c: pytest.fail("source reloaded"))
    train(str(tiny_data), out=run, resume=True, overrides={"time_limit_min": "0"}, **args)
    assert yaml.safe_load((run / "config.yaml").read_text())["data_info"]["init"] == first
    assert json.loads((run / "last.json").read_text())["config"]["data_info"]["init"] == first
    assert json.loads((run / "last.json").read_text())["metrics"]["epoch"] == 3


def test_the_source_is_checked_before_any_data_is_read(source_run, tiny_data, tmp_path,
                                                       monkeypatch):
    from darklens.training import data as tdata

    def no_data(*args, **kwargs):
        pytest.fail("data read before init_from was checked")

    monkeypatch.setattr(tdata, "load_array_splits", no_data)
    monkeypatch.setattr(tdata, "simulate_val", no_data)
    for data in (str(tiny_data), "sim:model_a"):
        with pytest.raises(DarklensError, match="init_from=.*holds model 'densenet_cbam_tiny'"):
            train(data, out=tmp_path / "ft", recipe="fast", epochs=1, resume=False, seed=0,
                  overrides={"init_from": str(source_run)},
                  **{**TINY, "model": "resnet_tiny"})


def test_a_source_of_another_image_size_warns(source_run, tmp_path):
    other = write_dataset(tmp_path / "ds48", n_train=12, n_val=4, size=48)
    with pytest.warns(UserWarning, match="its images were 32x32, this run's are 48x48"):
        train(str(other), out=tmp_path / "ft", recipe="fast", epochs=1, resume=False, seed=0,
              overrides={"init_from": str(source_run), "bn_recalib_batches": "1"}, **TINY)


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
    with pytest.raises(DarklensError, match="^init_from=.*no_such_run"):
        train(str(tiny_data), out=tmp_path / "ft", recipe="fast", epochs=1, resume=False,
              seed=0, overrides={"init_from": str(tmp_path / "no_such_run")}, **TINY)
    assert not (tmp_path / "ft").exists()


def test_a_fine_tune_records_the_images_its_source_run_trained_on(source_run, tmp_path):
    """evaluate refuses what the weights have seen: the fine-tune's images and its source's."""
    other = write_dataset(tmp_path / "other", n_train=12, n_val=4, seed=5)
    run = train(str(other), out=tmp_path / "ft", recipe="fast", epochs=1, resume=False, seed=0,
                overrides={"init_from": str(source_run), "bn_recalib_batches": "1"}, **TINY)
    own = set((source_run / "train_sha256.txt").read_text().split())
    seen = set((run / "train_sha256.txt").read_text().split())
    assert len(own) == 96 and own < seen and len(seen) == 96 + 36
