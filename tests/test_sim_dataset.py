"""darklens.sim API, determinism and the dataset writer (small images: fast on 2 CPU cores)."""

import hashlib

import numpy as np
import pytest
import torch

from darklens.cli import main
from darklens.errors import DarklensError
from darklens.sim import SimulatedStream, list_presets, simulate_batch, simulate_dataset
from darklens.sim.presets import get_config

SMALL = {"image_size": "32", "pixel_scale": "0.15", "n_subhalos": "5"}


def _tree_hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.npy"))}


def test_presets_listed():
    assert {"model_a", "model_i", "model_ii", "model_iii"} <= set(list_presets())


@pytest.mark.parametrize("preset", ["model_a", "model_i", "model_ii", "model_iii"])
def test_batch_range_shape_no_nan(preset):
    images, labels, params = simulate_batch(preset, labels=[0, 1, 2, 2], seed=3,
                                            overrides={"image_size": "24"})
    assert images.shape == (4, 1, 24, 24) and images.dtype == torch.float32
    assert torch.isfinite(images).all()
    flat = images.flatten(1)
    assert (flat.min(1).values == 0).all() and (flat.max(1).values == 1).all()
    assert labels.tolist() == [0, 1, 2, 2]
    assert all(v.shape == (4,) for v in params.values())
    # substructure only where the label says so
    assert params["sub_mass_total_msun"].tolist()[0] == 0 and params["sub_mass_total_msun"][1] > 0
    assert params["vort_mass_msun"][0] == 0 and (params["vort_mass_msun"][2:] > 0).all()


def test_axion_mass_sets_vortex_length_in_model_i():
    _, _, p = simulate_batch("model_i", labels=[2] * 6, seed=1, overrides={"image_size": "16"})
    np.testing.assert_allclose(p["vort_length"].numpy(), 2 * 0.03e-22 / p["axion_mass_ev"].numpy(),
                               rtol=1e-4)
    assert ((p["axion_mass_ev"] >= 1e-24 * 0.999) & (p["axion_mass_ev"] <= 1e-22 * 1.001)).all()


def test_subhalo_fraction_in_model_a():
    _, _, p = simulate_batch("model_a", labels=[1] * 5, seed=2, overrides=SMALL)
    frac = (p["sub_mass_total_msun"] / p["einstein_mass_msun"]).numpy()
    assert ((frac > 0.0099) & (frac < 0.0301)).all()


def test_content_independent_of_batch_size():
    labels = [i % 3 for i in range(12)]
    full, _, _ = simulate_batch("model_a", labels=labels, seed=5, overrides=SMALL)
    for start, size in [(0, 1), (3, 4), (7, 5)]:
        part, _, _ = simulate_batch("model_a", labels=labels[start:start + size], seed=5,
                                    start_index=start, overrides=SMALL)
        assert torch.equal(part, full[start:start + size])


def test_seeds_splits_and_classes_give_different_images():
    a, _, _ = simulate_batch("model_a", labels=[1] * 4, seed=0, overrides=SMALL)
    b, _, _ = simulate_batch("model_a", labels=[1] * 4, seed=1, overrides=SMALL)
    c, _, _ = simulate_batch("model_a", labels=[1] * 4, seed=0, split="val", overrides=SMALL)
    rows = {x.numpy().tobytes() for t in (a, b, c) for x in t}
    assert len(rows) == 12


def test_dataset_layout_and_byte_identity_across_batch_and_shards(tmp_path):
    one = tmp_path / "one"
    simulate_dataset(one, n_train=4, n_val=2, n_test=1, seed=9, device="cpu", batch=5,
                     overrides=SMALL, progress=False)
    files = _tree_hashes(one)
    assert len(files) == 3 * (4 + 2 + 1)
    x = np.load(one / "val" / "vort" / "1.npy", allow_pickle=False)
    assert x.shape == (1, 32, 32) and x.dtype == np.float32 and x.min() == 0 and x.max() == 1
    # splits never share an image
    assert len(set(files.values())) == len(files)
    sharded = tmp_path / "sharded"
    for i in range(3):
        simulate_dataset(sharded, n_train=4, n_val=2, n_test=1, seed=9, device="cpu", batch=2,
                         shard=(i, 3), overrides=SMALL, progress=False)
    assert _tree_hashes(sharded) == files
    assert (sharded / "params.csv").read_bytes() == (one / "params.csv").read_bytes()
    lines = (one / "params.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header[:5] == ["path", "split", "class", "label", "index"]
    assert {"theta_E", "gamma1", "sub0_center_x", "vort_angle", "exposure"} <= set(header)
    assert len(lines) == 1 + 21
    cfg = (one / "config.yaml").read_text()
    assert "seed: 9" in cfg and "image_size: 32" in cfg and "darklens_version" in cfg


def test_refuses_to_mix_datasets(tmp_path):
    simulate_dataset(tmp_path / "d", n_train=1, n_val=1, seed=0, device="cpu",
                     overrides=SMALL, progress=False)
    with pytest.raises(DarklensError, match="different simulated dataset"):
        simulate_dataset(tmp_path / "d", n_train=1, n_val=1, seed=1, device="cpu",
                         overrides=SMALL, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(DarklensError, match="not empty"):
        simulate_dataset(tmp_path / "other", n_train=1, n_val=1, device="cpu",
                         overrides=SMALL, progress=False)


@pytest.mark.parametrize("text,want", [
    ("1.2", (1.2, 1.2)), ("1.1,1.3", (1.1, 1.3)), ("1.1, 1.3", (1.1, 1.3)),
    ("[1.1, 1.3]", (1.1, 1.3)),
])
def test_range_override_spellings(text, want):
    from darklens.sim.presets import get_config

    got = get_config("model_a", {"theta_E": text}).theta_E
    assert tuple(got) == pytest.approx(want)
    assert get_config("model_a").theta_E == (1.1, 1.3)  # the preset itself is untouched


@pytest.mark.parametrize("overrides,match", [
    ({"no_such_key": "1"}, "unknown simulation key"),
    ({"image_size": "big"}, "expected an int"),
    ({"theta_E": "[2, 1]"}, "lo > hi"),
    ({"vort_model": "spiral"}, "expected one of"),
])
def test_bad_overrides_are_one_line_errors(overrides, match):
    with pytest.raises(DarklensError, match=match):
        simulate_batch("model_a", labels=[0], overrides=overrides)


def test_cli_simulate_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["simulate", str(out), "--train", "2", "--val", "1", "--device", "cpu",
                 "--set", "image_size=16", "--set", "theta_E=0.8"]) == 0
    assert len(list(out.rglob("*.npy"))) == 9
    assert main(["simulate", str(tmp_path / "x"), "--preset", "nope", "--train", "1",
                 "--val", "1"]) == 2
    err = capsys.readouterr().err
    assert "unknown simulation preset 'nope'" in err and "Traceback" not in err
    # the fused kernels need CUDA: a one-line error, and nothing written
    assert main(["simulate", str(tmp_path / "f"), "--train", "1", "--val", "1", "--device",
                 "cpu", "--backend", "fused"]) == 2
    err = capsys.readouterr().err
    assert "backend 'fused' needs CUDA" in err and not (tmp_path / "f").exists()


def test_stream_batches_are_fresh_and_mixed():
    stream = SimulatedStream("model_a", batch_size=30, seed=0, device="cpu", overrides=SMALL,
                             num_batches=2)
    batches = list(stream)
    assert len(batches) == 2
    (x0, y0), (x1, y1) = batches
    assert x0.shape == (30, 1, 32, 32) and not torch.equal(x0, x1)
    counts = torch.bincount(torch.cat([y0, y1]), minlength=3)
    assert (counts >= 8).all()  # ~20 each expected


def test_backend_choice_errors():
    from darklens.sim.simulator import choose_backend

    config = get_config("model_a")
    assert choose_backend("auto", config, "cpu") == "eager"
    with pytest.raises(DarklensError, match="unknown simulator backend"):
        choose_backend("turbo", config, "cpu")
    with pytest.raises(DarklensError, match="needs CUDA"):
        choose_backend("fused", config, "cpu")


def test_renderer_is_recorded_and_a_bad_backend_writes_nothing(tmp_path):
    out = tmp_path / "d"
    with pytest.raises(DarklensError, match="unknown simulator backend"):
        simulate_dataset(out, n_train=1, n_val=0, device="cpu", progress=False, backend="nope")
    assert not out.exists()
    simulate_dataset(out, n_train=1, n_val=0, device="cpu", progress=False,
                     overrides={"image_size": "16"})
    assert "renderer: eager on cpu" in (out / "config.yaml").read_text()
