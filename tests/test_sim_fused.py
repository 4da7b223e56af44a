"""The fused Triton renderer (the CUDA default) against the torch reference, on the CPU.

Triton's interpreter runs the same kernels with numpy, so CI checks them without a GPU.
The interpreter is switched on per process, hence the subprocess.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = Path(__file__).parent / "scripts" / "fused_vs_torch.py"


@pytest.fixture(scope="module")
def measured():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["model_a_noise_free", "model_a", "model_i"])
def test_fused_matches_torch_reference(measured, name):
    # same formulas in float32; only the order of a few products and atan/log1p differ
    assert measured[name] <= 1e-5
    # subhalos and vortices move pixels by far more than that tolerance
    assert measured[f"{name}_substructure_effect"] > 1e-3
    assert measured[f"{name}_batch_invariant"]


def test_fused_atan2(measured):
    assert measured["atan2_max_abs"] < 1e-6
    assert abs(measured["atan2_pi_on_negative_axis"]) < 1e-6


def test_render_fused_backend_matches_eager(measured):
    # the whole fused branch of render(): seed words, per-image split ids, min-max, params
    assert measured["render_fused_vs_eager"] < 1e-5
    assert measured["render_params_equal"]
    assert measured["render_seed_changes_images"] > 0.01


def test_fused_signal_map_matches_eager(measured):
    """render(with_signal=True) on the fused branch: the same image in channel 0, the same
    substructure chi-square map as the eager branch, zero for class "no" only."""
    assert measured["signal_image_unchanged"]
    assert measured["signal_fused_vs_eager"] < 1e-4
    assert measured["signal_noisy_fused_vs_eager"] < 1e-4
    no, sphere, vort = measured["signal_per_class_sums"]
    assert no == 0.0 and sphere > 0 and vort > 0


def test_failed_graph_capture_falls_back_to_uncaptured_launches(monkeypatch):
    from darklens.sim import cuda_graph

    def refuse(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(cuda_graph, "GraphedRender", refuse)
    monkeypatch.setattr(cuda_graph, "_GRAPHS", cuda_graph.OrderedDict())
    body = lambda *inputs: ("images", {})  # noqa: E731
    with pytest.warns(UserWarning, match="CUDA graph capture failed"):
        assert cuda_graph.graphed("key", body, [], "cuda:0") is body
    assert cuda_graph.graphed("key", body, [], "cuda:0") is body  # cached: one warning
