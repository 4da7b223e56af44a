"""Signal supervision: the simulator's substructure map, its D4 pairing, the head, training."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from bench_scripts import load_benchmark

from darklens.errors import DarklensError
from darklens.models import create_model
from darklens.sim import simulator as S
from darklens.sim.presets import get_config
from darklens.sim.rng import SPLITS
from darklens.train import train
from darklens.training import data as tdata
from darklens.training.signal import SignalSupervised, signal_loss, signal_target

SIM = {"sim_set": "[image_size=32]", "sim_steps_per_epoch": "2", "sim_val_per_class": "4",
       "bn_recalib_batches": "1", "ema_decay": "0.9"}
RUN = dict(model="resnet_tiny", recipe="fast", seed=0, batch=12, device="cpu", lr=3e-3)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DARKLENS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_signal_map_is_the_ideal_observer_chi2_per_pixel():
    """Channel 1 of render(with_signal=True) is, pixel by pixel, the substructure's chi-square
    written out here from the drawn parameters (masses zeroed by hand, Poisson + sky noise of
    the smooth image); per image it sums to what substructure_snr.py reports; channel 0 is the
    usual image."""
    config = get_config("model_a", {"image_size": "40"})
    labels, indices = torch.tensor([0, 1, 1, 2, 2, 0]), torch.arange(6)
    plain, _ = S.render(config, 7, SPLITS["test"], labels, indices, "cpu")
    both, p = S.render(config, 7, SPLITS["test"], labels, indices, "cpu", with_signal=True)
    assert both.shape == (6, 2, 40, 40)
    assert torch.equal(both[:, :1], plain)
    chi2 = both[:, 1]
    assert (chi2 >= 0).all() and (chi2[labels == 0] == 0).all()
    smooth_params = dict(p)
    for key in [k for k in p if k.startswith("sub") and k.endswith("_theta_E")]:
        smooth_params[key] = torch.zeros_like(p[key])
    smooth_params["vort_theta_E"] = torch.zeros_like(p["vort_theta_E"])
    lensed = S.render_noise_free(config, p, "cpu")
    smooth = S.render_noise_free(config, smooth_params, "cpu")
    variance = (smooth.clamp(min=0) + config.sky) / p["exposure"][:, None, None]
    variance = variance + config.background_rms ** 2
    want = (lensed - smooth) ** 2 / variance
    assert torch.allclose(chi2, want, rtol=1e-4, atol=1e-6 * float(want.max()))
    snr = load_benchmark("substructure_snr")
    for label in (1, 2):
        rows = torch.nonzero(labels == label).flatten()
        total = snr.substructure_chi2(config, label, 0, 7, SPLITS["test"], indices[rows])
        got = chi2[rows].flatten(1).sum(1).double().numpy()
        assert got == pytest.approx(total, rel=1e-5)
        assert (got > 1).all()  # not vacuous: the substructure is there


def test_signal_map_follows_its_image_through_d4():
    """sim_batches(with_signal) flips and rotates each map with its own image."""
    common = dict(batch_size=16, steps=1, seed=3, epoch=0, rank=0, device=torch.device("cpu"),
                  overrides={"image_size": "24"}, with_signal=True)
    x0, y0, m0 = next(tdata.sim_batches("model_a", augment="none", **common))
    x1, y1, m1 = next(tdata.sim_batches("model_a", augment="d4", **common))
    assert torch.equal(y0, y1) and m0.shape == x0.shape == (16, 1, 24, 24)

    def d4(t):
        views = [t, t.flip(-1), t.flip(-2), t.flip(-1).flip(-2)]
        return views + [v.transpose(-1, -2) for v in views]

    moved = 0
    for i in range(16):
        matches = [k for k, v in enumerate(d4(x0[i])) if torch.equal(v, x1[i])]
        assert matches, "the augmented image is no D4 view of the plain one"
        assert any(torch.equal(d4(m0[i])[k], m1[i]) for k in matches)
        moved += matches[0] != 0 and y0[i] > 0
    assert moved > 0  # some maps really were transformed


def test_signal_target_sums_cells_and_the_head_keeps_the_logits():
    chi2 = torch.rand(2, 1, 32, 32) * 5
    target = signal_target(chi2, (4, 4))
    assert target.shape == (2, 1, 4, 4)
    assert torch.expm1(target).sum((1, 2, 3)) == pytest.approx(chi2.sum((1, 2, 3)), rel=1e-5)
    # model_a's case: 150 pixels onto resnet layer2's 19 cells, overlapping bins
    wide = torch.nn.functional.interpolate(torch.rand(2, 1, 10, 10) * 5, size=(150, 150),
                                           mode="bilinear")
    cells = torch.expm1(signal_target(wide, (19, 19))).sum((1, 2, 3))
    assert cells == pytest.approx(wide.sum((1, 2, 3)), rel=0.01)  # 8x8 cells: off by 2.7%
    torch.manual_seed(0)
    backbone = create_model("resnet_tiny", in_chans=1, num_classes=3).eval()
    wrapped = SignalSupervised(backbone, stage=2).eval()
    x = torch.rand(2, 1, 32, 32)
    logits, predicted = wrapped(x)
    assert torch.equal(logits, backbone(x))  # the classifier is untouched
    assert predicted.shape == (2, 1, 4, 4)  # stage 2: 1/8 of the side
    loss = signal_loss(predicted, chi2)
    loss.backward()
    assert loss > 0 and wrapped.head.weight.grad.abs().sum() > 0


def test_signal_supervision_refuses_what_it_cannot_do(tmp_path, monkeypatch):
    with pytest.raises(DarklensError, match="densenet_cbam_tiny has no timm feature stages"):
        SignalSupervised(create_model("densenet_cbam_tiny"), model_name="densenet_cbam_tiny")
    with pytest.raises(DarklensError, match="signal_stage=9: resnet_tiny has feature stages 0-4"):
        SignalSupervised(create_model("resnet_tiny"), stage=9, model_name="resnet_tiny")
    with pytest.raises(DarklensError, match="signal_weight=-1: expected a finite weight"):
        train("sim:model_a", out=tmp_path / "neg", resume=False,
              overrides={**SIM, "signal_weight": "-1"}, epochs=1, **RUN)
    with pytest.raises(DarklensError, match="signal_stage=3: has no effect without"):
        train("sim:model_a", out=tmp_path / "neg", resume=False,
              overrides={**SIM, "signal_stage": "3"}, epochs=1, **RUN)
    def no_simulating(*args, **kwargs):
        raise AssertionError("simulated before refusing the model")

    with monkeypatch.context() as m, pytest.raises(
            DarklensError, match="densenet_cbam_tiny has no timm feature stages"):
        m.setattr(tdata, "simulate_val", no_simulating)
        train("sim:model_a", out=tmp_path / "neg", resume=False,
              overrides={**SIM, "signal_weight": "1"}, epochs=1,
              **{**RUN, "model": "densenet_cbam_tiny"})
    folder = tmp_path / "folder"
    for split in ("train", "val"):
        for c in ("no", "sphere", "vort"):
            (folder / split / c).mkdir(parents=True)
    with pytest.raises(DarklensError, match="signal supervision needs sim:PRESET"):
        train(str(folder), out=tmp_path / "f", resume=False, overrides={"signal_weight": "1"},
              epochs=1, **RUN)
    assert not (tmp_path / "neg").exists() and not (tmp_path / "f").exists()


def test_compile_trial_checks_both_outputs_of_a_signal_model(monkeypatch):
    """_try_compile with a signal head: the trial step runs through the (logits, map) pair,
    keeps a module whose two outputs match eager, and rejects one whose map alone differs."""
    import darklens.train as train_mod
    from darklens.training import distributed

    torch.manual_seed(0)
    wrapped = SignalSupervised(create_model("resnet_tiny"), stage=2)
    config = train_mod.build_config(recipe="fast", model="resnet_tiny", epochs=1, batch=4,
                                    lr=None, seed=0, overrides={"amp": "none"})
    single = distributed.DistInfo()

    class Off(torch.nn.Module):  # a "compiled" module with one of its two outputs wrong
        def __init__(self, inner, which):
            super().__init__()
            self.inner, self.which = inner, which

        def forward(self, x):
            out = list(self.inner(x))
            out[self.which] = out[self.which] * 3.0
            return tuple(out)

    args = (wrapped, torch.device("cpu"), config, 4, [32, 32], single)
    monkeypatch.setattr(torch, "compile", lambda module: module)
    assert train_mod._try_compile(*args) == (wrapped, True)
    # a map of large values must not hide wrong logits (one tolerance for both would)
    with torch.no_grad():
        wrapped.head.bias.fill_(1e3)
    for which, name in ((0, "outputs"), (1, "signal maps")):
        monkeypatch.setattr(torch, "compile", lambda module, w=which: Off(module, w))
        with pytest.warns(UserWarning, match=f"{name} differ from eager"):
            assert train_mod._try_compile(*args) == (wrapped, False)


def test_a_signal_run_starts_from_the_weights_of_its_plain_twin(tmp_path, monkeypatch):
    """Same seed, with and without the head: the classifier's first training step starts from
    the same weights (the paired comparisons in BENCHMARKS.md rely on it)."""
    from darklens.training import loop

    first = []
    original = loop.train_one_epoch

    def spy(model, *args, **kwargs):
        if kwargs["desc"].startswith("epoch 1/"):
            first.append({k: v.clone() for k, v in loop._unwrap(model).state_dict().items()})
        return original(model, *args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", spy)
    train("sim:model_a", out=tmp_path / "a", resume=False, overrides=SIM, epochs=1, **RUN)
    train("sim:model_a", out=tmp_path / "b", resume=False,
          overrides={**SIM, "signal_weight": "1"}, epochs=1, **RUN)
    plain, signal = first
    assert plain.keys() == signal.keys() and all(torch.equal(plain[k], signal[k]) for k in plain)


def _rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_signal_run_trains_the_head_saves_the_model_alone_and_resumes_exactly(
        tmp_path, monkeypatch):
    """The head's loss is logged and changes the training; checkpoints hold the bare model
    (loadable as it always was); a run stopped by its time limit and resumed (head and all)
    ends where one uninterrupted run does."""
    from safetensors.torch import load_file

    import darklens.train as train_mod
    from darklens.checkpoint import load_checkpoint

    on = {**SIM, "signal_weight": "1"}
    whole = train("sim:model_a", out=tmp_path / "whole", resume=False, overrides=on, epochs=3,
                  **RUN)
    plain = train("sim:model_a", out=tmp_path / "plain", resume=False, overrides=SIM,
                  epochs=3, **RUN)
    rows = _rows(whole)
    assert all(float(r["train_signal_loss"]) > 0 for r in rows)
    assert "train_signal_loss" not in _rows(plain)[0]
    a, b = load_file(whole / "last.safetensors"), load_file(plain / "last.safetensors")
    assert a.keys() == b.keys()  # no head in the checkpoint
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the head's loss changed the weights
    model, _ = load_checkpoint(whole / "best")
    assert model(torch.rand(1, 1, 32, 32)).shape == (1, 3)

    class Clock:  # every epoch "takes" a minute
        now = -60.0

        def perf_counter(self):
            Clock.now += 60.0
            return Clock.now

    monkeypatch.setattr(train_mod, "time", Clock())
    cut = tmp_path / "cut"
    train("sim:model_a", out=cut, resume=False, overrides={**on, "time_limit_min": "1.5"},
          epochs=3, **RUN)
    assert len(_rows(cut)) == 2
    train("sim:model_a", out=cut, resume=True, overrides={"time_limit_min": "0"}, epochs=3,
          **RUN)
    c = load_file(cut / "last.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert [r["train_signal_loss"] for r in _rows(cut)] == [r["train_signal_loss"] for r in rows]
