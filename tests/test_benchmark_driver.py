"""The training benchmark driver's own logic (no training): job specs, GPU sharing, and the
simulator overrides that make ``sim:`` training draw from the scored dataset's population."""

import argparse
import json
from pathlib import Path

import pytest
from bench_scripts import load_benchmark

from darklens.config import parse_set_args, to_dict
from darklens.sim.presets import get_config

bench = load_benchmark("train", "bench_train")  # "train" is too generic a name for sys.modules


def test_model_specs_take_an_optional_training_source():
    assert bench.parse_models("resnet18:40,resnet18:24:fast:sim,densenet_cbam::seed", 12) == [
        ("resnet18", 40, "fast", "data"), ("resnet18", 24, "fast", "sim"),
        ("densenet_cbam", 12, "seed", "data")]
    with pytest.raises(SystemExit, match="'data' or 'sim'"):
        bench.parse_models("resnet18:4:fast:simulated", 12)


def test_a_resumed_job_keeps_its_settings_so_darklens_can_refuse_changed_ones(tmp_path):
    extra = ["--epochs", "60", "--set", "batch_size=1024"]
    fresh = bench.train_args(tmp_path, extra, minutes=3.7, fit_budget=True)
    assert "--resume" not in fresh and "budget_min=3.20" in fresh
    (tmp_path / "last.state.pt").touch()
    # the saved run's time limits stand; the job's own settings go along to be checked
    assert bench.train_args(tmp_path, extra, minutes=3.7, fit_budget=True) == ["--resume", *extra]


@pytest.mark.parametrize("returncode, killed, scored", [(0, False, True), (2, False, False),
                                                        (-9, True, True)])
def test_a_job_whose_training_failed_is_not_scored_from_an_old_checkpoint(
        tmp_path, monkeypatch, returncode, killed, scored):
    """A refused --resume (exit 2) leaves the previous run's best.json: never report it."""
    run = tmp_path / "runs" / "resnet18-fast"
    run.mkdir(parents=True)
    (run / "best.json").write_text("{}")
    (run / "last.state.pt").touch()
    (run / "metrics.csv").write_text("epoch,accuracy,auc_macro,train_images_per_s\n"
                                     "1,0.4,0.6,1000\n")
    calls = []

    def fake_run(cmd, env, log, limit_s):
        calls.append(cmd)
        if "evaluate" in cmd:
            out = run / "eval_test"
            out.mkdir(exist_ok=True)
            (out / "report.json").write_text(json.dumps(
                {"accuracy": 0.5, "auc": {"macro": 0.7, "micro": 0.7},
                 "ci95": {"macro_auc": [0.6, 0.8]}}))
            return {"returncode": 0, "killed": False, "wall_s": 1.0}
        return {"returncode": returncode, "killed": killed, "wall_s": 1.0}

    monkeypatch.setattr(bench, "run_limited", fake_run)
    monkeypatch.setattr(bench, "count_params", lambda run: 1)
    a = argparse.Namespace(data=tmp_path / "data", runs=tmp_path / "runs", set=[],
                           json=tmp_path / "r.json", job_minutes=3.0, eval_minutes=0.5,
                           eval_split="test", budget_min=0.0, deadline=0.0)
    result = {"models": {}, "data": {"preset": "model_a"}}
    bench.accuracy_job(a, bench.Slots(device="cpu", n=1), ("resnet18", 5, "fast", "data"), 0,
                       result)
    entry = result["models"]["resnet18-fast"]
    assert ("test_accuracy" in entry) == scored
    assert ("val_accuracy" in entry) == scored  # nor the old run's training numbers
    assert any("evaluate" in c for c in calls) == scored
    if not scored:
        assert entry["status"].startswith("failed: darklens train exited 2")
        assert "model_a_accuracy" not in result


def test_a_ddp_run_whose_training_failed_reports_no_speed(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "ddp1"
    run.mkdir(parents=True)
    (run / "last.state.pt").touch()
    (run / "metrics.csv").write_text("epoch,accuracy,auc_macro,train_images_per_s\n"
                                     "1,0.4,0.6,1000\n2,0.5,0.7,1200\n")
    monkeypatch.setattr(bench, "run_limited", lambda cmd, env, log, limit_s: {
        "returncode": 2, "killed": False, "wall_s": 1.0})
    a = argparse.Namespace(data=tmp_path / "data", runs=tmp_path / "runs", set=[],
                           json=tmp_path / "r.json", job_minutes=3.0, budget_min=0.0,
                           deadline=0.0, gpu_counts="1", model="resnet_tiny", recipe="fast",
                           epochs=2, device="cpu", per_gpu_batch=0)
    result = {}
    bench.stage_ddp(a, result)
    entry = result["scaling"]["1"]
    assert "images_per_s" not in entry and entry["status"].startswith("incomplete")


def test_jobs_sharing_a_gpu_see_that_gpu():
    slots = bench.Slots(device="cuda", n=4, per_gpu=2)
    assert [slots.env([i])["CUDA_VISIBLE_DEVICES"] for i in range(4)] == ["0", "0", "1", "1"]
    assert bench.Slots(device="cuda", n=2).env([1])["CUDA_VISIBLE_DEVICES"] == "1"


def test_sim_overrides_rebuild_the_recorded_config():
    recorded = to_dict(get_config("model_a", {"image_size": "32", "theta_E": "1.0,1.4",
                                              "noise": "false"}))
    items = bench.sim_overrides("model_a", recorded)
    assert sorted(i.split("=")[0] for i in items) == ["image_size", "noise", "theta_E"]
    # What a sim: job gets: the items through --set sim_set=<json>, then the train config's parse
    data, extra = bench.sim_source({"preset": "model_a", "sim_set": items})
    assert data == "sim:model_a" and extra[0] == "--set"
    sim_set = parse_set_args([extra[1]])["sim_set"]
    rebuilt = get_config("model_a", parse_set_args(json.loads(sim_set)))
    assert to_dict(rebuilt) == recorded
    assert bench.sim_source({"preset": "model_a", "sim_set": []}) == ("sim:model_a", [])
    assert bench.sim_overrides("model_a", to_dict(get_config("model_a"))) == []


def test_accuracy_keys_name_the_data_and_its_overrides():
    scored = {"m": {"test_accuracy": 0.9, "test_macro_auc": 0.95}}
    plain = {"models": scored, "data": {"preset": "model_a", "sim_set": []}}
    bench._summarise_accuracy(plain)
    assert plain["model_a_accuracy"] == 0.9 and plain["model_a_macro_auc"] == 0.95
    leaky = {"models": scored, "data": {"preset": "model_a", "sim_set": ["class_grid=5"]}}
    bench._summarise_accuracy(leaky)
    assert "model_a_accuracy" not in leaky and leaky["model_a+class_grid=5_accuracy"] == 0.9


def test_stage_probe_covers_the_whole_network():
    """benchmarks/stage_probe.py: its stages' FLOPs add up to the whole model's step."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from darklens.models import create_model

    probe = load_benchmark("stage_probe")
    rows = probe.probe("densenet_cbam_tiny", batch=2, size=40, device="cpu",
                       compile_stages=False, amp=False, iters=1, warmup=0)
    assert [r["stage"] for r in rows] == list(probe.STAGES)
    torch.manual_seed(0)
    net = create_model("densenet_cbam_tiny").train()
    with FlopCounterMode(display=False) as whole:
        net(torch.rand(2, 1, 40, 40)).float().square().mean().backward()
    assert abs(sum(r["gflop"] for r in rows) * 1e9 - whole.get_total_flops()) < 1e3
    assert rows[-1]["out_shape"] == [3] and abs(sum(r["share"] for r in rows) - 1) < 1e-9


def _toy_args(out: Path, json_path: Path) -> list[str]:
    return ["--out", str(out), "--epochs", "2", "--steps", "1", "--batch", "6", "--val", "2",
            "--test", "3", "--image-size", "32", "--json", str(json_path)]


def test_curriculum_benchmark_runs_both_arms_and_scores_them_on_one_test_set(tmp_path):
    """benchmarks/curriculum.py end to end at toy size: the arms differ only by the boost."""
    script = load_benchmark("curriculum")
    out = tmp_path / "cur"
    script.main(_toy_args(out, tmp_path / "r.json"))
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    # epoch 1 of the curriculum arm trained on other (heavier) images than the baseline's
    import csv

    losses = [float(next(csv.DictReader(open(out / f"seed0_{arm}" / "metrics.csv")))["train_loss"])
              for arm in ("baseline", "curriculum")]
    assert losses[0] != losses[1]
    assert [r["arm"] for r in rows] == ["baseline", "curriculum"]
    base, boosted = (set(r["command"].split()) for r in rows)
    assert boosted - base == {str(out / "seed0_curriculum"), "sim_mass_boost=10.0",
                              "sim_boost_fraction=0.5"}
    assert base - boosted == {str(out / "seed0_baseline"), "sim_mass_boost=1"}
    for r in rows:
        assert r["test_auc"]["macro"] == r["test_macro_auc"] and len(r["confusion_matrix"]) == 3
        assert sum(map(sum, r["confusion_matrix"])) == 9  # 3 test images per class


def test_curriculum_benchmark_variant_arms_differ_only_by_the_variant(tmp_path):
    """--variant: both arms keep the curriculum; the variant arm adds its --set items."""
    script = load_benchmark("curriculum")
    out = tmp_path / "var"
    script.main([*_toy_args(out, tmp_path / "r.json"), "--variant", "signal_weight=0.1"])
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [r["arm"] for r in rows] == ["curriculum", "variant"]
    base, variant = (set(r["command"].split()) for r in rows)
    assert variant - base == {str(out / "seed0_variant"), "signal_weight=0.1"}
    assert base - variant == {str(out / "seed0_curriculum")}
    assert {"sim_mass_boost=10.0", "sim_boost_fraction=0.5"} <= base
