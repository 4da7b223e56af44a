"""Checkpoints: round trips, spec resolution, corrupt files, preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from darklens import CLASSES
from darklens.checkpoint import (
    clean_state_dict,
    list_pretrained,
    load_checkpoint,
    preprocess,
    save_checkpoint,
)
from darklens.errors import DarklensError
from darklens.models import create_model

KW = dict(model_kwargs={}, preprocessing={"subtract": 0.5}, config={"lr": 3e-4},
          metrics={"auc": 0.9})


def _save(stem, model=None, name="densenet_cbam_tiny", **kw):
    torch.manual_seed(0)
    model = model if model is not None else create_model(name)
    args = {**KW, **kw}
    save_checkpoint(stem, model, model_name=name, **args)
    return model


def test_round_trip_from_folder_and_either_file(tmp_path):
    model = _save(tmp_path / "best", seed=7, extra={"epoch": 3})
    model.eval()
    x = torch.randn(3, 1, 32, 32)
    for spec in (tmp_path, tmp_path / "best.json", tmp_path / "best.safetensors",
                 str(tmp_path / "best")):
        loaded, meta = load_checkpoint(spec)
        assert not loaded.training
        assert torch.equal(loaded(x), model(x))
    meta = json.loads((tmp_path / "best.json").read_text())
    assert meta["model"] == "densenet_cbam_tiny"
    assert meta["classes"] == list(CLASSES)
    assert meta["preprocessing"] == {"subtract": 0.5}
    assert meta["config"] == {"lr": 3e-4} and meta["metrics"] == {"auc": 0.9}
    assert meta["seed"] == 7 and meta["epoch"] == 3
    assert meta["darklens_version"]
    assert not list(tmp_path.glob("*.tmp"))  # no temp files left behind


def test_folder_falls_back_to_last(tmp_path):
    _save(tmp_path / "last")
    _, meta = load_checkpoint(tmp_path)
    assert meta["source"].endswith("last.safetensors")


def test_model_kwargs_rebuild_the_same_architecture(tmp_path):
    torch.manual_seed(0)
    model = create_model("densenet_cbam_tiny", num_classes=5, seed_exact=True)
    save_checkpoint(tmp_path / "m", model, model_name="densenet_cbam_tiny",
                    model_kwargs={"num_classes": 5, "seed_exact": True},
                    preprocessing={}, config={}, metrics={})
    loaded, _ = load_checkpoint(tmp_path / "m.json")
    assert loaded.neck[-1].out_features == 5
    assert loaded.a_b1.s_a.seed_exact is True


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight  # shared storage: safetensors refuses it as-is


def test_clean_state_dict_strips_wrappers_and_unshares():
    wrapped = nn.DataParallel(_Tied())  # keys start with "module."
    state = clean_state_dict(wrapped)
    assert set(state) == {"a.weight", "a.bias", "b.weight", "b.bias"}
    assert state["a.weight"].data_ptr() != state["b.weight"].data_ptr()
    compiled_like = nn.Module()
    compiled_like._orig_mod = nn.Linear(2, 2)
    assert set(clean_state_dict(compiled_like)) == {"weight", "bias"}


def test_save_tied_and_noncontiguous_weights(tmp_path):
    from safetensors.torch import load_file

    model = _Tied()
    model.a.weight = nn.Parameter(torch.randn(4, 4).t())  # a transposed, non-contiguous view
    model.b.weight = model.a.weight
    assert not model.a.weight.is_contiguous()
    save_checkpoint(tmp_path / "t", model, model_name="x", **KW)
    state = load_file(tmp_path / "t.safetensors")
    assert torch.equal(state["a.weight"], model.a.weight.detach())
    assert torch.equal(state["b.weight"], model.a.weight.detach())


def test_errors_name_the_file(tmp_path):
    with pytest.raises(DarklensError, match="no best"):
        load_checkpoint(tmp_path)
    with pytest.raises(DarklensError, match="nothing.json"):
        load_checkpoint(tmp_path / "nothing.json")
    with pytest.raises(DarklensError, match="not a run folder"):
        load_checkpoint(tmp_path / "nothing")

    _save(tmp_path / "best")
    weights = tmp_path / "best.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated download
    with pytest.raises(DarklensError, match="best.safetensors"):
        load_checkpoint(tmp_path)

    # Without a recorded sha256 the safetensors reader itself must catch the corruption.
    meta = json.loads((tmp_path / "best.json").read_text())
    del meta["weights_sha256"]
    (tmp_path / "best.json").write_text(json.dumps(meta))
    with pytest.raises(DarklensError, match="best.safetensors: not a readable safetensors"):
        load_checkpoint(tmp_path)

    (tmp_path / "best.json").write_text("{not json")
    with pytest.raises(DarklensError, match="best.json"):
        load_checkpoint(tmp_path)

    weights.unlink()
    (tmp_path / "best.json").write_text(json.dumps(meta))
    with pytest.raises(DarklensError, match="best.safetensors: checkpoint weights not found"):
        load_checkpoint(tmp_path)


def test_weights_that_do_not_fit_the_model(tmp_path):
    _save(tmp_path / "best")
    meta = json.loads((tmp_path / "best.json").read_text())
    meta["model"] = "densenet_cbam"  # wrong architecture for these weights
    (tmp_path / "best.json").write_text(json.dumps(meta))
    with pytest.raises(DarklensError, match="do not fit model 'densenet_cbam'"):
        load_checkpoint(tmp_path)


def test_weights_of_another_family_are_one_short_line(tmp_path):
    """Every missing key of a whole network would be a page: the message keeps ~300 chars."""
    _save(tmp_path / "best")
    meta = json.loads((tmp_path / "best.json").read_text())
    meta["model"] = "resnet_tiny"  # none of the densenet keys exists there
    (tmp_path / "best.json").write_text(json.dumps(meta))
    with pytest.raises(DarklensError, match=r"do not fit model 'resnet_tiny' \(Missing key") \
            as info:
        load_checkpoint(tmp_path)
    assert str(info.value).endswith(", ...)") and len(str(info.value)) < 500


def test_unknown_pretrained_lists_available():
    with pytest.raises(DarklensError, match="pretrained:nope: no such pretrained model"):
        load_checkpoint("pretrained:nope")
    for entry in list_pretrained():  # whatever is shipped must load and carry metrics
        model, meta = load_checkpoint(f"pretrained:{entry['name']}")
        assert meta["model"] == entry["model"]
        assert isinstance(entry["metrics"], dict)


def test_preprocess_subtract_crop_resize():
    images = np.random.default_rng(0).random((2, 150, 150), dtype=np.float32)
    out = preprocess(images, {"preprocessing": {"subtract": 0.5}})
    assert out.dtype == torch.float32 and out.shape == (2, 1, 150, 150)
    np.testing.assert_allclose(out[:, 0].numpy(), images - 0.5)

    # Larger image: center crop, pixel values untouched (hand-computed offsets: (150-64)//2 = 43).
    out = preprocess(images[:, None], {"preprocessing": {"input_size": [64, 64]}})
    np.testing.assert_array_equal(out[:, 0].numpy(), images[:, 43:107, 43:107])

    # Smaller image: bilinear resize; a linear ramp stays a linear ramp (hand check).
    ramp = np.tile(np.arange(32, dtype=np.float64), (32, 1))[None]
    out = preprocess(torch.from_numpy(ramp), {"preprocessing": {"input_size": [64, 64],
                                                                 "subtract": 1.0}})
    assert out.shape == (1, 1, 64, 64)
    # align_corners=False: output column j samples input x = (j + 0.5) / 2 - 0.5, clamped.
    want = np.clip((np.arange(64) + 0.5) / 2 - 0.5, 0, 31) - 1.0
    np.testing.assert_allclose(out[0, 0, 10].numpy(), want, atol=1e-5)

    with pytest.raises(DarklensError, match="expected"):
        preprocess(np.zeros(5), {"preprocessing": {}})


def test_e2cnn_round_trip_through_safetensors(tmp_path):
    """e2cnn state_dict keys contain quotes and brackets, and eval() re-expands the filters."""
    torch.manual_seed(0)
    model = create_model("e2cnn_tiny", group="d4")
    with torch.no_grad():
        model(torch.rand(4, 1, 32, 32))  # non-initial BatchNorm statistics
    save_checkpoint(tmp_path / "best", model, model_name="e2cnn_tiny",
                    model_kwargs={"group": "d4"}, preprocessing={}, config={}, metrics={})
    loaded, _ = load_checkpoint(tmp_path)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


def test_preprocess_read_only_memmap_and_bad_dtype(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.full((2, 8, 8), 0.75, dtype=np.float32))
    images = np.load(path, mmap_mode="r")
    out = preprocess(images, {"preprocessing": {"subtract": 0.5, "divide": 0.5}})
    np.testing.assert_allclose(out.numpy(), 0.5)  # (0.75 - 0.5) / 0.5
    with pytest.raises(DarklensError, match="numeric"):
        preprocess(np.array([[["a"]]]), {"preprocessing": {}})
