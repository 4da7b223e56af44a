"""Review fixes: the demo's folders, which split trains, --resume settings, early model check,
and the upscaling warning of ``preprocess``."""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import darklens.demo as demo
from darklens.checkpoint import preprocess
from darklens.cli import main
from darklens.errors import DarklensError
from darklens.train import train

sys.path.insert(0, str(Path(__file__).parent))
from train_fixtures import write_dataset  # noqa: E402

TINY = {"model": "densenet_cbam_tiny", "batch": 32, "device": "cpu", "allow_pickle": False,
        "lr": 3e-3, "recipe": "fast", "seed": 0}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DARKLENS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


# --- 1. the demo deletes only folders it made ------------------------------------------------

@pytest.mark.parametrize("folder", ["data", "run", "pretrained-test"])
def test_demo_refuses_a_folder_it_did_not_make(tmp_path, capsys, tiny_demo, folder):
    out = tmp_path / "demo"
    (out / folder).mkdir(parents=True)
    (out / folder / "mydata.txt").write_text("precious")
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"{out / folder} exists and was not made by darklens demo; choose another --out" \
        in err[0]
    assert (out / folder / "mydata.txt").read_text() == "precious"
    assert not (out / "report.json").exists()  # refused before any work


def _fake_report() -> dict:
    return {"n": 3, "accuracy": 1.0, "macro_f1": 1.0, "ece": 0.0,
            "auc": {"no": 1.0, "sphere": 1.0, "vort": 1.0, "micro": 1.0, "macro": 1.0},
            "ci95": {"accuracy": [1, 1], "macro_auc": [1.0, 1.0]}}


def test_demo_rerun_replaces_only_its_own_folders(tmp_path, monkeypatch, capsys):
    """Stages faked: each must find its folder empty, on the first run and on the rerun."""
    import darklens.checkpoint
    import darklens.evaluation
    import darklens.sim
    import darklens.train

    seen = []

    def fake_sim(path, **kw):
        path = Path(path)
        seen.append(sorted(p.name for p in path.iterdir()) if path.exists() else None)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.yaml").write_text("x")

    def fake_train(data, *, out, **kw):
        out = Path(out)
        seen.append(sorted(p.name for p in out.iterdir()) if out.exists() else None)
        out.mkdir(parents=True, exist_ok=True)
        (out / "last.state.pt").write_text("x")  # a second train into it would refuse

    monkeypatch.setattr(darklens.sim, "simulate_dataset", fake_sim)
    monkeypatch.setattr(darklens.train, "train", fake_train)
    monkeypatch.setattr(darklens.evaluation, "evaluate", lambda *a, **k: _fake_report())
    monkeypatch.setattr(darklens.checkpoint, "list_pretrained", lambda: [{"name": "p"}])
    out = tmp_path / "demo"
    (out / "notes").mkdir(parents=True)  # the user's own folder next to the demo's: kept
    (out / "notes" / "a.txt").write_text("mine")
    demo.run_demo(out=out, device="cpu")
    assert seen == [[], [], []]  # fresh empty folders
    assert (out / "data" / "config.yaml").exists()
    demo.run_demo(out=out, device="cpu")
    assert seen[3:] == [[], [], []]  # the rerun found its own folders emptied
    assert (out / "notes" / "a.txt").read_text() == "mine"
    assert (out / "data" / "config.yaml").exists()

    # a demo folder replaced by the user's own folder is no longer the demo's
    shutil.rmtree(out / "run")
    (out / "run").mkdir()
    (out / "run" / "keep.txt").write_text("x")
    with pytest.raises(DarklensError, match="run exists and was not made by darklens demo"):
        demo.run_demo(out=out, device="cpu")
    assert (out / "run" / "keep.txt").exists()


def test_demo_never_overwrites_report_files_or_report_folders_it_did_not_make(
        tmp_path, monkeypatch):
    import darklens.checkpoint
    import darklens.evaluation
    import darklens.sim
    import darklens.train

    def fake_evaluate(model, data, *, out, **kw):
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "report.md").write_text("demo's")
        return _fake_report()

    monkeypatch.setattr(darklens.sim, "simulate_dataset",
                        lambda path, **kw: Path(path).mkdir(parents=True, exist_ok=True))
    monkeypatch.setattr(darklens.train, "train", lambda data, *, out, **kw: None)
    monkeypatch.setattr(darklens.evaluation, "evaluate", fake_evaluate)
    monkeypatch.setattr(darklens.checkpoint, "list_pretrained", lambda: [{"name": "p"}])
    for mine in ("report.md", "predictions.csv", "pretrained-p/report.md"):
        out = tmp_path / mine.replace("/", "_")
        (out / mine).parent.mkdir(parents=True, exist_ok=True)
        (out / mine).write_text("MINE")
        with pytest.raises(DarklensError, match=f"{mine.split('/')[0]} exists and was not "
                                                "made by darklens demo"):
            demo.run_demo(out=out, device="cpu")
        assert (out / mine).read_text() == "MINE"

    # a demo's own OUT (its marker) from before report folders were marked: still replaced
    out = tmp_path / "old_demo"
    demo.run_demo(out=out, device="cpu")
    (out / "pretrained-p" / demo.MARKER_NAME).unlink()
    demo.run_demo(out=out, device="cpu")
    assert (out / "report.md").read_text() == "demo's"


def test_demo_out_has_help():
    from darklens.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.choices and "demo" in a.choices)
    out = next(a for a in sub.choices["demo"]._actions if "--out" in a.option_strings)
    assert out.help and "demo" in out.help


# --- 2. never train on a split named val or test -----------------------------------------------

def _rename_split(root: Path, old: str, new: str) -> Path:
    (root / old).rename(root / new)
    return root


def test_refuses_a_dataset_without_train_split(tmp_path):
    only_test = _rename_split(write_dataset(tmp_path / "a", n_train=8, n_val=None), "train",
                              "test")
    with pytest.raises(DarklensError, match=r"no 'train' split \(found: test\)"):
        train(str(only_test), out=tmp_path / "r1", epochs=1, overrides={}, **TINY)
    val_test = _rename_split(write_dataset(tmp_path / "b", n_train=8, n_val=4), "train", "test")
    with pytest.raises(DarklensError, match=r"no 'train' split \(found: val, test\)"):
        train(str(val_test), out=tmp_path / "r2", epochs=1, overrides={}, **TINY)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_unsplit_class_folders_train_on_all(tmp_path):
    import yaml

    root = write_dataset(tmp_path / "ds", n_train=20, n_val=None)
    for c in ("no", "sphere", "vort"):  # class folders directly under the root: split "all"
        (root / "train" / c).rename(root / c)
    (root / "train").rmdir()
    run = train(str(root), out=tmp_path / "run", epochs=1,
                overrides={"val_fraction": "0.25", "bn_recalib_batches": "0"}, **TINY)
    info = yaml.safe_load((run / "config.yaml").read_text())["data_info"]
    assert info["train_split"] == "all" and info["n_train"] == 45 and info["n_val"] == 15


# --- 6. --resume refuses settings that differ from the saved run --------------------------------

@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    data = write_dataset(base / "ds", n_train=32, n_val=12)
    run = train(str(data), out=base / "run", epochs=1,
                overrides={"ema_decay": "0.9", "bn_recalib_batches": "0"}, **TINY)
    return data, run


@pytest.mark.parametrize("change, named", [
    ({"epochs": 3}, "epochs 1 -> 3"),
    ({"lr": 1e-3}, "lr 0.003 -> 0.001"),
    ({"batch": 16}, "batch_size 32 -> 16"),
    ({"overrides": {"ema_decay": "0.5"}}, "ema_decay 0.9 -> 0.5"),
    ({"overrides": {"nope": "1"}}, "unknown train config key 'nope'"),
    ({"model": "resnet_tiny"}, "model densenet_cbam_tiny -> resnet_tiny"),
    ({"recipe": "seed"}, "recipe fast -> seed"),
    ({"seed": 3}, "seed 0 -> 3"),
    ({"data": "other_ds"}, "data"),
])
def test_resume_refuses_changed_settings(one_epoch_run, change, named):
    data, run = one_epoch_run
    before = (run / "metrics.csv").read_text()
    args = {**TINY, "epochs": None, "overrides": {}, **change}
    data_arg = str(data.parent / args.pop("data")) if "data" in change else str(data)
    with pytest.raises(DarklensError) as e:
        train(data_arg, out=run, resume=True, **args)
    msg = str(e.value)
    assert "\n" not in msg and named in msg
    if "nope" not in named:
        assert "new --out" in msg
    assert (run / "metrics.csv").read_text() == before  # nothing trained


def test_resume_with_the_same_settings_is_accepted(one_epoch_run, capsys):
    data, run = one_epoch_run
    before = (run / "metrics.csv").read_text()
    # every argument as first given (the saved values), or left out: nothing left to train
    train(str(data), out=run, resume=True, epochs=1,
          overrides={"ema_decay": "0.9", "bn_recalib_batches": "0"}, **TINY)
    train(str(data), out=run, resume=True, epochs=None, batch=None, lr=None, overrides={},
          device="cpu")
    assert (run / "metrics.csv").read_text() == before
    assert "already finished" in capsys.readouterr().out


# --- 10. bad model name first; no partial run folder -------------------------------------------

def test_bad_model_is_refused_before_the_data_is_read(tmp_path):
    missing = tmp_path / "no_such_dataset"
    with pytest.raises(DarklensError, match="unknown model 'bogus'"):
        train(str(missing), out=tmp_path / "run", epochs=1, overrides={},
              **{**TINY, "model": "bogus"})
    assert not (tmp_path / "run").exists()


def test_failed_train_leaves_no_val_split_json(tmp_path):
    root = write_dataset(tmp_path / "ds", n_train=4, n_val=None)  # 9 train images < batch 32
    with pytest.raises(DarklensError, match="fewer than one batch"):
        train(str(root), out=tmp_path / "run", epochs=1, overrides={}, **TINY)
    assert not (tmp_path / "run" / "val_split.json").exists()
    assert not (tmp_path / "run").exists()


# --- 7. upscaling in preprocess warns ------------------------------------------------------------

def test_preprocess_warns_when_upscaling_more_than_10_percent():
    meta = {"preprocessing": {"input_size": [150, 150], "subtract": 0.5}}
    with pytest.warns(UserWarning, match=r"32x32 .*150x150.*pixel scale") as record:
        out = preprocess(np.zeros((2, 32, 32), np.float32), meta)
    assert len([w for w in record if "150x150" in str(w.message)]) == 1
    assert out.shape == (2, 1, 150, 150)  # behaviour kept: still resized
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 140 -> 150 is 7%, a crop is no upscale: no warning
        assert preprocess(np.zeros((1, 140, 140)), meta).shape == (1, 1, 150, 150)
        assert preprocess(np.zeros((1, 160, 160)), meta).shape == (1, 1, 150, 150)
    with pytest.warns(UserWarning, match="136x150"):  # one axis 10.3% short
        preprocess(np.zeros((1, 136, 150)), meta)


def test_demo_reclaims_the_folders_of_an_interrupted_demo(tmp_path):
    """Made but never marked (the demo was killed mid-stage): still the demo's on a rerun."""
    out = tmp_path / "d"
    folders = demo.claim_folders(out, ["data", "run"])
    (folders["data"] / "0.npy").write_bytes(b"half a dataset")
    demo.mark_folder(folders["run"])
    assert json.loads((out / demo.MARKER_NAME).read_text()) == {"pending": ["data"]}
    assert (out / "run" / demo.MARKER_NAME).is_file()
    again = demo.claim_folders(out, ["data", "run"])  # neither raises
    assert not any(again["data"].iterdir()) and not any(again["run"].iterdir())
    (out / "elsewhere").mkdir()
    (out / "elsewhere" / "f").write_text("x")
    with pytest.raises(DarklensError, match="elsewhere exists and was not made"):
        demo.claim_folders(out, ["data", "elsewhere"])
    assert (out / "elsewhere" / "f").exists()


def test_a_new_run_never_overwrites_a_run_or_a_dataset_but_restarts_a_failed_start(
        tmp_path, monkeypatch):
    """Without --resume a run refuses a folder holding another run's results (even with its
    state file gone) or a config.yaml that is not a run's (a simulated dataset's); files a run
    never writes (a job's log) stay; what a start that failed before its first checkpoint left
    behind does not block the same command."""
    import yaml

    data = write_dataset(tmp_path / "d", n_train=12, n_val=4)
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.json").write_text("an old run's")
    with pytest.raises(DarklensError, match=r"run: holds a run \(best.json\); pass --resume"):
        train(str(data), out=run, epochs=1, resume=False, **TINY)
    assert (run / "best.json").read_text() == "an old run's"
    (run / "best.json").unlink()
    (run / "last.state.pt").write_text("a stopped run's state")  # --resume continues it
    with pytest.raises(DarklensError, match=r"run: holds a run \(last.state.pt\); pass --resume"):
        train(str(data), out=run, epochs=1, resume=False, **TINY)
    (data / "config.yaml").write_text(yaml.safe_dump({"preset": "model_a", "seed": 3}))
    with pytest.raises(DarklensError, match="config.yaml: not a darklens run's config"):
        train(str(data), out=data, epochs=1, resume=False, **TINY)
    assert yaml.safe_load((data / "config.yaml").read_text())["seed"] == 3

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "log.txt").write_text("the job's log")
    from darklens.training import loop

    with monkeypatch.context() as m:  # a start that dies in epoch 1 (a kill, an OOM)
        m.setattr(loop, "train_one_epoch", lambda *a, **k: (_ for _ in ()).throw(
            RuntimeError("out of memory")))
        with pytest.raises(RuntimeError, match="out of memory"):
            train(str(data), out=fresh, epochs=1, resume=False, **TINY)
    assert (fresh / "config.yaml").exists() and not (fresh / "metrics.csv").exists()
    train(str(data), out=fresh, epochs=1, resume=False, **TINY)  # the same command: runs
    assert (fresh / "log.txt").read_text() == "the job's log"
    assert (fresh / "metrics.csv").exists()


def test_run_files_get_the_usual_permissions(tmp_path):
    """mkstemp's 0600 would hide checkpoints from colleagues sharing the folder."""
    import os

    data = write_dataset(tmp_path / "d", n_train=12, n_val=4)
    old = os.umask(0o022)
    try:
        run = train(str(data), out=tmp_path / "run", epochs=1, resume=False, **TINY)
    finally:
        os.umask(old)
    for name in ("best.json", "best.safetensors", "last.json", "last.safetensors",
                 "last.state.pt", "metrics.csv", "config.yaml", "train_sha256.txt"):
        assert (run / name).stat().st_mode & 0o777 == 0o644, name
