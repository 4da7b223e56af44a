"""darklens export: the ONNX graph run by onnxruntime matches PyTorch's probabilities."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_evaluate import SIZE, lens_like, tiny_checkpoint

from darklens.cli import main

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _e2cnn_checkpoint(run):
    from darklens.checkpoint import save_checkpoint
    from darklens.models import create_model

    torch.manual_seed(0)
    save_checkpoint(run / "best", create_model("e2cnn_tiny").eval(), model_name="e2cnn_tiny",
                    model_kwargs={}, preprocessing={"subtract": 0.5, "input_size": [SIZE, SIZE]},
                    config={}, metrics={})
    return run


@pytest.mark.parametrize("make", [tiny_checkpoint, _e2cnn_checkpoint],
                         ids=["densenet_cbam_tiny", "e2cnn_tiny"])
def test_onnx_matches_pytorch(tmp_path, make):
    from darklens.checkpoint import load_checkpoint, preprocess

    run = make(tmp_path / "run")
    path = tmp_path / "out" / "model.onnx"
    assert main(["export", str(run), "--onnx", str(path)]) == 0
    model, meta = load_checkpoint(str(run))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    rng = np.random.default_rng(0)
    for batch in (1, 5, 9):  # the batch axis is dynamic
        images = np.stack([lens_like(rng, k % 3) for k in range(batch)])
        x = preprocess(images, meta)
        with torch.no_grad():
            expected = torch.softmax(model(x), 1).numpy()
        (got,) = session.run(None, {"input": x.numpy()})
        assert got.shape == (batch, 3)
        assert np.abs(got - expected).max() <= 1e-4
        assert np.allclose(got.sum(1), 1.0, atol=1e-5)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["darklens_preprocessing"]) == {"subtract": 0.5,
                                                           "input_size": [SIZE, SIZE]}
    assert props["darklens_model"] == meta["model"]


def test_export_bad_model_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing"), "--onnx", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0]
    assert not (tmp_path / "m.onnx").exists()
