"""darklens.train on CPU: schedule, D4, splits, leakage, metrics vs sklearn, resume, DDP (gloo)."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from darklens.errors import DarklensError
from darklens.train import train
from darklens.training import data as tdata
from darklens.training import loop

sys.path.insert(0, str(Path(__file__).parent))
from train_fixtures import MinuteClock, write_dataset  # noqa: E402

TINY = {"model": "densenet_cbam_tiny", "batch": 32, "device": "cpu", "allow_pickle": False,
        "lr": 3e-3}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DARKLENS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("tiny") / "ds", n_train=32, n_val=12)


def read_rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_cosine_with_warmup_hand_values():
    f = loop.cosine_with_warmup(10, 110)
    assert f(0) == 0.0 and f(5) == pytest.approx(0.5) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)  # half-way through the cosine: (1 + cos(pi/2)) / 2
    assert f(35) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert f(110) == pytest.approx(0.0)


def test_d4_augment_gives_the_eight_symmetries():
    g = torch.Generator().manual_seed(0)
    base = np.arange(16, dtype=np.float32).reshape(4, 4)
    out = tdata.d4_augment(torch.from_numpy(base).expand(400, 1, 4, 4).clone(), g).numpy()
    group = [np.rot90(base, k) for k in range(4)] + [np.rot90(base.T, k) for k in range(4)]
    seen = set()
    for img in out[:, 0]:
        match = [i for i, ref in enumerate(group) if np.array_equal(img, ref)]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == set(range(8))


def test_stratified_val_indices():
    labels = np.repeat([0, 1, 2], [100, 50, 30])
    idx = tdata.stratified_val_indices(labels, 0.2, seed=3)
    assert np.bincount(labels[idx]).tolist() == [20, 10, 6]
    assert np.array_equal(idx, tdata.stratified_val_indices(labels, 0.2, seed=3))
    assert not np.array_equal(idx, tdata.stratified_val_indices(labels, 0.2, seed=4))


def test_train_writes_run_and_metrics_match_sklearn(tiny_data, tmp_path):
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    from darklens.checkpoint import load_checkpoint, preprocess
    from darklens.data import open_dataset

    run = train(str(tiny_data), out=tmp_path / "run", recipe="fast", epochs=2, resume=False,
                seed=0, overrides={"ema_decay": "0.9"}, **TINY)
    rows = read_rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert int(rows[0]["train_images"]) == 96  # 96 // 32 full batches, drop_last
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["seed"] == 0 and config["recipe"] == "fast" and config["lr"] == 3e-3
    for name in ("best", "last"):
        assert (run / f"{name}.safetensors").exists() and (run / f"{name}.json").exists()

    # The best checkpoint, re-scored with sklearn, must reproduce its metrics.csv row.
    model, meta = load_checkpoint(run, device="cpu")
    val = open_dataset(tiny_data, progress=False).split("val")
    with torch.no_grad():
        probs = model.eval()(preprocess(np.asarray(val.images), meta)).softmax(1).numpy()
    best = rows[meta["metrics"]["epoch"] - 1]
    onehot = np.eye(3)[val.labels]
    assert float(best["accuracy"]) == pytest.approx(accuracy_score(val.labels, probs.argmax(1)),
                                                    abs=1e-6)
    assert float(best["macro_f1"]) == pytest.approx(
        f1_score(val.labels, probs.argmax(1), average="macro"), abs=1e-5)
    assert float(best["auc_macro"]) == pytest.approx(
        roc_auc_score(onehot, probs, average="macro"), abs=1e-4)
    assert float(best["auc_micro"]) == pytest.approx(
        roc_auc_score(onehot, probs, average="micro"), abs=1e-4)
    assert max(float(r["auc_macro"]) for r in rows) == float(best["auc_macro"])


def test_validation_is_fp32_like_evaluate_even_when_training_in_bf16(tiny_data, tmp_path,
                                                                     monkeypatch):
    # CUDA's bf16 autocast, emulated on the CPU (darklens' own autocast is CUDA-only). The
    # logged validation must be what the saved checkpoint gives in fp32 (evaluate, predict):
    # validating under bf16 logged 0.599 for weights that score 0.44 in fp32 (an H200 run).
    from darklens.checkpoint import load_checkpoint, preprocess
    from darklens.data import open_dataset

    used = []

    def cpu_autocast(device, amp):
        used.append((amp, torch.is_grad_enabled()))
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16")

    monkeypatch.setattr(loop, "autocast", cpu_autocast)
    run = train(str(tiny_data), out=tmp_path / "run", recipe="fast", epochs=2, resume=False,
                seed=0, overrides={"ema_decay": "0.9", "bn_recalib_batches": "2",
                                   "amp": "bf16"}, **TINY)
    assert ("bf16", True) in used  # the training steps did run under bf16
    assert all(amp == "none" for amp, grad in used if not grad)  # BN statistics, validation
    model, meta = load_checkpoint(run, device="cpu")
    val = open_dataset(tiny_data, progress=False).split("val")
    with torch.no_grad():
        probs = model.eval()(preprocess(np.asarray(val.images), meta)).softmax(1).double()
    best = read_rows(run)[meta["metrics"]["epoch"] - 1]
    val_loss = -probs[np.arange(len(val.labels)), val.labels].log().mean().item()
    assert float(best["val_loss"]) == pytest.approx(val_loss, abs=1e-5)


def test_refuses_leakage_between_train_and_val(tmp_path):
    root = write_dataset(tmp_path / "ds", n_train=4, n_val=2)
    leaked = np.load(root / "train" / "sphere" / "1.npy")
    np.save(root / "val" / "vort" / "0.npy", leaked)
    with pytest.raises(DarklensError, match="both train and val.*train/sphere/1.npy"):
        train(str(root), out=tmp_path / "run", recipe="fast", epochs=1, resume=False, seed=0,
              overrides={}, **TINY)


def test_no_val_split_makes_a_recorded_stratified_split(tmp_path):
    root = write_dataset(tmp_path / "ds", n_train=20, n_val=None)
    run = train(str(root), out=tmp_path / "run", recipe="fast", epochs=1, resume=False, seed=5,
                overrides={"val_fraction": "0.25", "bn_recalib_batches": "1"}, **TINY)
    split = json.loads((run / "val_split.json").read_text())
    classes = [p.split("/")[-2] for p in split["val_paths"]]
    assert sorted(classes) == ["no"] * 5 + ["sphere"] * 5 + ["vort"] * 5
    assert int(read_rows(run)[0]["train_images"]) == 32  # 45 train images -> one batch of 32


def test_bad_settings_are_one_line_errors(tiny_data, tmp_path):
    with pytest.raises(DarklensError, match="unknown train config key 'nope'"):
        train(str(tiny_data), out=tmp_path / "r", recipe="fast", epochs=1, resume=False, seed=0,
              overrides={"nope": "1"}, **TINY)
    with pytest.raises(DarklensError, match="nothing to resume"):
        train(str(tiny_data), out=tmp_path / "r2", recipe="fast", epochs=1, resume=True, seed=0,
              overrides={}, **TINY)


def test_seed_recipe_is_the_notebooks():
    from darklens.train import build_config

    c = build_config(recipe="seed", model="densenet_cbam", epochs=None, batch=None, lr=None,
                     seed=0, overrides=None)
    assert (c.lr, c.weight_decay, c.batch_size, c.epochs, c.warmup_epochs) == (
        3e-4, 1e-5, 64, 20, 3.0)
    assert c.label_smoothing == 0.1 and c.plain_ce_during_warmup and c.subtract == 0.5
    assert c.augment == "none" and c.amp == "none" and c.ema_decay == 0
    assert not c.fused_optimizer  # torch's default AdamW, as the notebook


def test_budget_fits_the_schedule_and_resume_keeps_it(tiny_data, tmp_path, monkeypatch):
    import darklens.train as train_mod

    args = dict(recipe="fast", epochs=10, seed=0,
                overrides={"budget_min": "3", "bn_recalib_batches": "1", "ema_decay": "0"},
                **TINY)
    monkeypatch.setattr(train_mod, "time", MinuteClock())  # epoch 1 "takes" a minute
    run = train(str(tiny_data), out=tmp_path / "b", resume=False, **args)
    rows = read_rows(run)
    assert len(rows) == 3  # 3 minutes / 1 minute per epoch, out of the 10 asked for
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["fitted_epochs"] == 3 and config["epochs"] == 10
    # 1 warm-up epoch, then the cosine over 2 epochs: epoch 3 starts half-way down (lr 0.5 x)
    # (over the 10 requested epochs it would start at 0.97 x)
    assert float(rows[2]["lr"]) == pytest.approx(0.5 * TINY["lr"], rel=1e-6)
    # resume sees the fitted length: finished, nothing to train, and the same --epochs is fine
    train(str(tiny_data), out=run, resume=True, **args)
    assert len(read_rows(run)) == 3
    assert train_mod._epochs_in_budget(0.5, 10, 100) == 100  # never more than asked
    assert train_mod._epochs_in_budget(700, 10, 100) == 1  # never fewer than the one done


def test_a_time_limited_run_resumes_with_a_raised_limit_to_the_uninterrupted_result(
        tiny_data, tmp_path, monkeypatch):
    """A run cut by time_limit_min (a wall-limited job) and resumed with larger limits ends
    exactly as one run; the limit given on resume is the one used and saved; resuming with the
    spent limit is a one-line error, not one more epoch."""
    from safetensors.torch import load_file

    import darklens.train as train_mod

    base = dict(recipe="fast", epochs=4, seed=0, **TINY)
    fixed = {"bn_recalib_batches": "1", "ema_decay": "0.9"}
    monkeypatch.setattr(train_mod, "time", MinuteClock())  # every epoch "takes" a minute
    cut = tmp_path / "cut"
    train(str(tiny_data), out=cut, resume=False,
          overrides={**fixed, "time_limit_min": "1.5"}, **base)
    assert len(read_rows(cut)) == 2  # 2 minutes trained > 1.5: stopped after epoch 2 of 4
    with pytest.raises(DarklensError, match="time_limit_min=1.5, is spent"):
        train(str(tiny_data), out=cut, resume=True, overrides={}, **base)
    with pytest.raises(DarklensError, match="settings differ: ema_decay"):  # others still fixed
        train(str(tiny_data), out=cut, resume=True,
              overrides={"ema_decay": "0.5", "time_limit_min": "10"}, **base)
    with pytest.raises(DarklensError, match="time_limit_min=-1: expected minutes >= 0"):
        train(str(tiny_data), out=cut, resume=True, overrides={"time_limit_min": "-1"}, **base)
    train(str(tiny_data), out=cut, resume=True, overrides={"time_limit_min": "2.5"}, **base)
    assert len(read_rows(cut)) == 3  # the new limit stopped it again, after epoch 3
    assert yaml.safe_load((cut / "config.yaml").read_text())["time_limit_min"] == 2.5
    with pytest.raises(DarklensError, match="time_limit_min=2.5, is spent"):  # saved with it
        train(str(tiny_data), out=cut, resume=True, overrides={}, **base)
    train(str(tiny_data), out=cut, resume=True, overrides={"time_limit_min": "0"}, **base)
    whole = train(str(tiny_data), out=tmp_path / "whole", resume=False, overrides=fixed, **base)

    a, b = load_file(whole / "last.safetensors"), load_file(cut / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["val_loss"] for r in read_rows(cut)] == [r["val_loss"] for r in read_rows(whole)]
    assert len(read_rows(whole)) == 4


_KILLED_RUN = textwrap.dedent("""
    import os, sys
    from darklens.training import loop
    # Simulate kill -9 in the middle of epoch 2: no cleanup, no checkpoint of that epoch.
    original = loop.train_one_epoch
    def crashing(*args, **kwargs):
        if kwargs["desc"].startswith("epoch 2/"):
            kwargs["step_hook"] = lambda step: os._exit(137) if step == 1 else None
        return original(*args, **kwargs)
    loop.train_one_epoch = crashing
    from darklens.cli import main
    sys.exit(main(["train", sys.argv[1], "--out", sys.argv[2], "--model", "densenet_cbam_tiny",
                   "--device", "cpu", "--epochs", "2", "--batch", "32", "--lr", "3e-3",
                   "--set", "ema_decay=0.9", "--set", "bn_recalib_batches=2"]))
""")


def test_resume_after_kill_matches_uninterrupted_run(tiny_data, tmp_path):
    from safetensors.torch import load_file

    script = tmp_path / "killed_run.py"
    script.write_text(_KILLED_RUN)
    killed = subprocess.run([sys.executable, str(script), str(tiny_data), str(tmp_path / "k")],
                            capture_output=True, text=True, env=os.environ.copy())
    assert killed.returncode == 137, killed.stderr[-2000:]
    assert len(read_rows(tmp_path / "k")) == 1  # epoch 2 never finished
    args = dict(recipe="fast", epochs=2, seed=0,
                overrides={"ema_decay": "0.9", "bn_recalib_batches": "2"}, **TINY)
    train(str(tiny_data), out=tmp_path / "k", resume=True, **args)
    train(str(tiny_data), out=tmp_path / "full", resume=False, **args)

    a = load_file(tmp_path / "full" / "last.safetensors")
    b = load_file(tmp_path / "k" / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    timing = {"train_images_per_s", "epoch_train_s", "elapsed_s"}
    rows_a = [{k: v for k, v in r.items() if k not in timing} for r in read_rows(tmp_path / "full")]
    rows_b = [{k: v for k, v in r.items() if k not in timing} for r in read_rows(tmp_path / "k")]
    assert rows_a == rows_b and len(rows_a) == 2


def test_ddp_two_cpu_processes_with_gloo(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone", "-m", "darklens", "train", str(tiny_data), "--out", str(out),
           "--model", "densenet_cbam_tiny", "--device", "cpu", "--epochs", "1", "--batch", "32",
           "--set", "bn_recalib_batches=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert yaml.safe_load((out / "config.yaml").read_text())["world_size"] == 2
    rows = read_rows(out)
    # 96 images, 16 per rank per step: 3 global steps of 32 -> every image seen exactly once.
    assert len(rows) == 1 and int(rows[0]["train_images"]) == 96
    assert (out / "best.safetensors").exists()


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_ddp_compile_failing_on_one_rank_trains_eagerly_everywhere(tiny_data, tmp_path, where):
    """The compile trial holds no collective a failing rank could skip: no rank hangs."""
    out = tmp_path / f"ddp-{where}"
    script = Path(__file__).parent / "scripts" / "ddp_compile_fault.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone", str(script), str(tiny_data), str(out), where]
    # Its own session, so a hang (the failure this test looks for) leaves no workers behind.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("a rank hung in the compile trial")
    assert proc.returncode == 0, stderr[-3000:]
    assert f"inductor exploded in the {where}" in stderr  # rank 0's own reason
    assert "failed on another rank" in stderr  # rank 1 followed it
    assert yaml.safe_load((out / "config.yaml").read_text())["compiled"] is False
    assert len(read_rows(out)) == 1


@pytest.mark.slow
def test_sim_preset_trains_on_fresh_batches_with_fixed_val(tmp_path):
    run = train("sim:model_a", out=tmp_path / "sim", recipe="fast", epochs=2, resume=False,
                seed=0, overrides={"sim_set": "[image_size=32]", "sim_steps_per_epoch": "2",
                                   "sim_val_per_class": "4", "bn_recalib_batches": "1"},
                **{**TINY, "batch": 12})
    rows = read_rows(run)
    assert [int(r["train_images"]) for r in rows] == [24, 24]
    assert yaml.safe_load((run / "config.yaml").read_text())["data_info"]["n_val"] == 12


@pytest.mark.parametrize("fused", [True, False])
def test_non_finite_step_is_skipped_without_touching_weights(fused):
    """A step whose gradient is NaN leaves weights and optimizer moments as they were."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    opt = (loop.make_optimizer(net.parameters(), lr=0.1, weight_decay=0.01) if fused
           else torch.optim.SGD(net.parameters(), lr=0.1))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    batches = [(torch.rand(8, 4), torch.randint(0, 3, (8,))) for _ in range(3)]
    poison = {"on": False}

    def loss_fn(logits, y):
        loss = torch.nn.functional.cross_entropy(logits, y)
        return loss * float("nan") if poison["on"] else loss

    kwargs = dict(n_steps=3, optimizer=opt, scheduler=sched, loss_fn=loss_fn, subtract=0.0,
                  device=torch.device("cpu"), amp="none", channels_last=False, ema=None,
                  grad_clip=1.0, desc="", show_progress=False)
    stats = loop.train_one_epoch(net, batches[:1], **kwargs)  # a finite step moves the weights
    assert stats["skipped_steps"] == 0
    before = [p.detach().clone() for p in net.parameters()]
    moments = {k: v.clone() for k, v in opt.state_dict()["state"].get(0, {}).items()}
    poison["on"] = True
    stats = loop.train_one_epoch(net, batches, **kwargs)
    assert stats["skipped_steps"] == 3
    for p, q in zip(net.parameters(), before):
        assert torch.equal(p, q)
    for k, v in opt.state_dict()["state"].get(0, {}).items():
        assert torch.equal(v, moments[k]), k
    poison["on"] = False
    loop.train_one_epoch(net, batches[:1], **kwargs)
    assert not all(torch.equal(p, q) for p, q in zip(net.parameters(), before))


def test_model_layout_gives_every_batch_one_stride_pattern():
    """torch.compile guards on strides: a trial batch and a D4 batch must not differ."""
    g = torch.Generator().manual_seed(0)
    trial = torch.rand(8, 1, 6, 6) - 0.5
    augmented = tdata.d4_augment(torch.rand(8, 1, 6, 6), g) - 0.5
    for channels_last in (True, False):
        a = loop.model_layout(trial, channels_last)
        b = loop.model_layout(augmented, channels_last)
        assert a.stride() == b.stride()
        assert torch.equal(a, trial) and torch.equal(b, augmented)


def test_fused_optimizer_resumed_from_a_non_fused_run_still_skips():
    """--resume of a run saved before the fused optimizer: the loaded state is not fused."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    old = torch.optim.AdamW(net.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(net(torch.rand(8, 4)), torch.randint(0, 3, (8,))).backward()
    old.step()
    opt = loop.make_optimizer(net.parameters(), lr=0.1, weight_decay=0.01)
    opt.load_state_dict(old.state_dict())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    before = [p.detach().clone() for p in net.parameters()]
    stats = loop.train_one_epoch(
        net, [(torch.rand(8, 4), torch.randint(0, 3, (8,)))], n_steps=1, optimizer=opt,
        scheduler=sched, loss_fn=lambda logits, y: logits.sum() * float("nan"), subtract=0.0,
        device=torch.device("cpu"), amp="none", channels_last=False, ema=None, grad_clip=1.0,
        desc="", show_progress=False)
    assert stats["skipped_steps"] == 1
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))


def test_mass_boost_falls_geometrically_to_one():
    factors = [tdata.mass_boost(16.0, 4, e) for e in range(6)]
    assert factors == pytest.approx([16.0, 8.0, 4.0, 2.0, 1.0, 1.0])
    assert tdata.mass_boost(16.0, 0, 0) == 1.0  # no curriculum epochs: off


def test_mass_boosted_scales_each_class_in_its_own_mass_mode():
    from darklens.sim.presets import get_config

    plain = {"image_size": "64"}
    assert tdata.mass_boosted("model_a", plain, 10.0, 2, 2) is plain  # after the curriculum
    boosted = get_config("model_a", tdata.mass_boosted("model_a", plain, 10.0, 2, 0))
    base = get_config("model_a", plain)
    assert boosted.sub_mass_fraction == pytest.approx([10 * x for x in base.sub_mass_fraction])
    assert boosted.vort_mass_fraction == pytest.approx([10 * x for x in base.vort_mass_fraction])
    assert boosted.image_size == 64 and boosted.sub_mass_msun == base.sub_mass_msun
    msun = get_config("model_i", tdata.mass_boosted("model_i", {}, 4.0, 2, 0))  # solar masses
    assert msun.sub_mass_msun == pytest.approx([4 * x for x in get_config("model_i").sub_mass_msun])
    assert msun.vort_mass_msun == pytest.approx(
        [4 * x for x in get_config("model_i").vort_mass_msun])


def test_curriculum_boosts_only_the_early_training_batches(tmp_path, monkeypatch):
    """Training batches of the first sim_boost_fraction of the epochs get heavier
    substructure; validation, BN re-estimation and later epochs see the preset's own."""
    calls = []
    real_batches, real_val = tdata.sim_batches, tdata.simulate_val

    def spy_batches(preset, **kw):
        calls.append(("batches", kw["seed"], kw["epoch"], dict(kw["overrides"] or {})))
        return real_batches(preset, **kw)

    def spy_val(preset, *args, **kw):
        calls.append(("val", None, None, dict(kw["overrides"] or {})))
        return real_val(preset, *args, **kw)

    import darklens.train as train_mod

    monkeypatch.setattr(tdata, "sim_batches", spy_batches)
    monkeypatch.setattr(tdata, "simulate_val", spy_val)
    monkeypatch.setattr(train_mod, "time", MinuteClock())  # epoch 1 "takes" a minute
    # 10 epochs asked, 3 fit the budget: the curriculum spans round(0.67 * 3) = 2 of them
    train("sim:model_a", out=tmp_path / "sim", recipe="fast", epochs=10, resume=False, seed=0,
          overrides={"sim_set": "[image_size=32]", "sim_steps_per_epoch": "1",
                     "sim_val_per_class": "2", "bn_recalib_batches": "1", "budget_min": "3",
                     "sim_mass_boost": "4", "sim_boost_fraction": "0.67"},
          **{**TINY, "batch": 6})
    from darklens.sim.presets import get_config

    plain = {"image_size": "32"}
    training = {epoch: o for kind, seed, epoch, o in calls if kind == "batches" and seed == 0}
    for epoch, factor in ((0, 4.0), (1, 2.0)):  # 4 ** (1 - epoch / 2)
        config = get_config("model_a", training[epoch])
        assert config.sub_mass_fraction == pytest.approx([0.01 * factor, 0.03 * factor])
        assert config.vort_mass_fraction == pytest.approx([0.01 * factor, 0.03 * factor])
    assert training[2] == plain and len(training) == 3
    others = [o for kind, seed, _, o in calls if not (kind == "batches" and seed == 0)]
    assert len(others) == 4 and all(o == plain for o in others)  # val + 3 BN re-estimations


@pytest.mark.parametrize("recipe, preset, boosted", [("fast", "model_a", True),
                                                    ("seed", "model_a", False),
                                                    ("fast", "model_ii", False)])
def test_fast_recipe_trains_model_a_with_the_curriculum_by_default(tmp_path, monkeypatch,
                                                                   recipe, preset, boosted):
    """No --set: the fast recipe's first sim:model_a epoch sees 10x heavier substructure
    (measured to help, BENCHMARKS.md session 9); the seed recipe stays the notebook's plain
    training, and model_ii (strong substructure, where it did not help) trains without it."""
    seen = []
    real_batches = tdata.sim_batches

    def spy_batches(preset, **kw):
        seen.append(dict(kw["overrides"] or {}))
        return real_batches(preset, **kw)

    monkeypatch.setattr(tdata, "sim_batches", spy_batches)
    run = train(f"sim:{preset}", out=tmp_path / recipe, recipe=recipe, epochs=1, resume=False,
                seed=0, overrides={"sim_set": "[image_size=32]", "sim_steps_per_epoch": "1",
                                   "sim_val_per_class": "2", "bn_recalib_batches": "0"},
                **{**TINY, "batch": 6})
    from darklens.sim.presets import get_config

    saved = yaml.safe_load((run / "config.yaml").read_text())
    if boosted:
        first = get_config(preset, seen[0])
        assert first.sub_mass_fraction == pytest.approx([0.1, 0.3])  # 10 x model_a's 1-3%
        assert (saved["sim_mass_boost"], saved["sim_boost_fraction"]) == (10.0, 0.5)
    else:
        assert seen[0] == {"image_size": "32"}
        assert (saved["sim_mass_boost"], saved["sim_boost_fraction"]) == (1.0, 0.0)


def test_recipe_curriculum_keeps_what_the_user_asked_for():
    from darklens.train import _recipe_curriculum, build_config

    fast = build_config(recipe="fast", model="densenet_cbam", epochs=None, batch=None, lr=None,
                        seed=0, overrides={"sim_mass_boost": "5"})

    def pair(c):
        return c.sim_mass_boost, c.sim_boost_fraction

    assert pair(_recipe_curriculum(fast, "sim:model_a", asked=set())) == (5.0, 0.5)
    assert pair(_recipe_curriculum(fast, "sim:model_ii", asked=set())) == (1.0, 0.0)
    assert pair(_recipe_curriculum(fast, "sim:model_ii", asked={"sim_mass_boost"})) == (5.0, 0.5)
    assert pair(_recipe_curriculum(fast, "sim:model_ii", asked={"sim_boost_fraction"})) == (
        5.0, 0.5)
    assert pair(_recipe_curriculum(fast, "data/", asked={"lr"})) == (1.0, 0.0)


def test_fast_recipe_curriculum_is_ignored_for_a_dataset_folder(tiny_data, tmp_path):
    """The recipe's own curriculum does not stop a folder run (its images are fixed), and the
    run's config.yaml records it as off."""
    run = train(str(tiny_data), out=tmp_path / "r", recipe="fast", epochs=1, resume=False,
                seed=0, overrides={}, **TINY)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["sim_mass_boost"], saved["sim_boost_fraction"]) == (1.0, 0.0)


@pytest.mark.parametrize("given", [{"sim_mass_boost": "4", "sim_boost_fraction": "0"},
                                   {"sim_mass_boost": "1", "sim_boost_fraction": "0.5"},
                                   {"sim_mass_boost": "1"}])
def test_folder_run_with_the_curriculum_set_off_resumes_with_the_same_command(
        tiny_data, tmp_path, given):
    """Curriculum keys given explicitly but off are accepted on a folder, recorded as given,
    and the same command resumes (fails if the folder reset overwrote what was given)."""
    args = dict(recipe="fast", epochs=1, seed=0, overrides=given, **TINY)
    run = train(str(tiny_data), out=tmp_path / "r", resume=False, **args)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    for key, value in given.items():
        assert saved[key] == float(value)
    train(str(tiny_data), out=run, resume=True, **args)  # finished: nothing to train, no error


def test_mass_boost_on_a_dataset_folder_is_a_one_line_error(tiny_data, tmp_path):
    with pytest.raises(DarklensError, match="the mass curriculum needs sim:PRESET"):
        train(str(tiny_data), out=tmp_path / "r", recipe="fast", epochs=1, resume=False, seed=0,
              overrides={"sim_mass_boost": "4", "sim_boost_fraction": "0.5"}, **TINY)
    for bad in ({"sim_mass_boost": "0.5"}, {"sim_mass_boost": "nan"},
                {"sim_boost_fraction": "1"}, {"sim_boost_fraction": "-0.1"}):
        with pytest.raises(DarklensError, match="expected a finite boost >= 1"):
            train("sim:model_a", out=tmp_path / "r2", recipe="fast", epochs=1, resume=False,
                  seed=0, overrides=bad, **TINY)
    with pytest.raises(DarklensError, match="more than the Einstein mass"):  # 3% x 40
        train("sim:model_a", out=tmp_path / "r3", recipe="fast", epochs=1, resume=False, seed=0,
              overrides={"sim_mass_boost": "40", "sim_boost_fraction": "0.5"}, **TINY)


def test_boost_epochs_round_half_up_and_never_vanish():
    from darklens.train import TrainConfig, _boost_epochs

    on = TrainConfig(sim_mass_boost=10, sim_boost_fraction=0.5)
    assert [_boost_epochs(on, n) for n in (1, 2, 3, 5, 40)] == [1, 1, 2, 3, 20]
    assert _boost_epochs(TrainConfig(sim_mass_boost=10, sim_boost_fraction=0.01), 3) == 1
    assert _boost_epochs(TrainConfig(sim_mass_boost=1, sim_boost_fraction=0.5), 40) == 0
    assert _boost_epochs(TrainConfig(sim_mass_boost=10, sim_boost_fraction=0), 40) == 0
