"""``darklens export``: a checkpoint as an ONNX graph mapping preprocessed images to probabilities.

The graph takes ``input`` (batch, C, h, w) float32 **after** the checkpoint's preprocessing (the
recipe is stored in the ONNX metadata as ``darklens_preprocessing``) and returns ``probs``
(batch, num_classes), the softmax of the logits. The batch axis is dynamic.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from darklens.config import check_output_file
from darklens.errors import DarklensError

OPSET = 17


class _Softmaxed(nn.Module):
    """Wrap a logits model so the exported graph ends in softmax over classes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def _plain(model: nn.Module) -> nn.Module:
    """Equivariant (e2cnn) layers have no ONNX form; their plain-conv equivalent does."""
    try:
        from darklens.models import export_plain
    except ImportError:
        return model
    return export_plain(model)


def input_shape(meta: dict) -> tuple[int, int, int]:
    """(C, h, w) that the model sees after preprocessing."""
    prep = meta.get("preprocessing") or {}
    size = prep.get("input_size") or [150, 150]
    chans = int((meta.get("model_kwargs") or {}).get("in_chans", 1))
    return chans, int(size[0]), int(size[1])


def export_onnx(model: str | Path, onnx_path: str | Path) -> Path:
    """Export checkpoint ``model`` to ``onnx_path`` (written atomically).

    Args:
        model: run folder, checkpoint file or ``pretrained:<name>``.
        onnx_path: output ``.onnx`` file.

    Returns:
        The path written.
    """
    import onnx

    from darklens.checkpoint import load_checkpoint

    onnx_path = check_output_file(onnx_path)  # before loading and tracing the model
    net, meta = load_checkpoint(model, device="cpu")
    wrapped = _Softmaxed(_plain(net)).eval()
    chans, h, w = input_shape(meta)
    example = torch.zeros(2, chans, h, w)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = onnx_path.with_name(f".{onnx_path.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings():
            # the TorchScript exporter is deprecated but needs no onnxscript and keeps one file
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                wrapped, (example,), str(tmp), dynamo=False, opset_version=OPSET,
                input_names=["input"], output_names=["probs"],
                dynamic_axes={"input": {0: "batch"}, "probs": {0: "batch"}},
            )
        graph = onnx.load(str(tmp))
        for key, value in {
            "darklens_model": meta.get("model", ""),
            "darklens_classes": json.dumps(meta.get("classes", [])),
            "darklens_preprocessing": json.dumps(meta.get("preprocessing") or {}),
            "darklens_source": meta.get("source", str(model)),
        }.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, str(value)
        onnx.checker.check_model(graph)
        onnx.save(graph, str(tmp))
        os.replace(tmp, onnx_path)
    except (RuntimeError, torch.onnx.errors.OnnxExporterError) as e:
        raise DarklensError(f"{model}: ONNX export failed ({str(e).splitlines()[0]})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return onnx_path
