"""benchmarks/error_vs_signal.py: it measures the very images a classifier was scored on."""

from pathlib import Path

import numpy as np
import pytest
from bench_scripts import load_benchmark

from darklens import CLASSES
from darklens.evaluation.report import predictions_csv
from darklens.sim import simulate_dataset

evs = load_benchmark("error_vs_signal")  # it puts benchmarks/ on sys.path for its sibling


@pytest.fixture(scope="module")
def small_test_set(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("evs") / "data"
    simulate_dataset(data, preset="model_a", n_train=0, n_val=0, n_test=6, seed=7, device="cpu",
                     progress=False, overrides={"image_size": "48", "pixel_scale": "0.1"})
    return data


def _write_predictions(path: Path, right: set[str]) -> None:
    """Every image called correctly if its path is in ``right``, else called "no"/"sphere"."""
    paths, labels, probs = [], [], []
    for k, c in enumerate(CLASSES):
        for i in range(6):
            paths.append(f"test/{c}/{i}.npy")
            pred = k if paths[-1] in right else (1 if c == "no" else 0)
            labels.append(k)
            probs.append([0.8 if j == pred else 0.1 for j in range(3)])
    path.write_text(predictions_csv(paths, np.array(probs), np.array(labels)))


def test_misses_are_binned_by_the_substructure_of_the_images_scored(small_test_set, tmp_path):
    import substructure_snr as snr
    import torch

    config, seed = evs.dataset_config(small_test_set)
    x2 = snr.substructure_chi2(config, 1, 0, seed, 2, torch.arange(6))
    strong = {f"test/sphere/{i}.npy" for i in np.argsort(x2)[3:]}  # the 3 strongest right
    preds = tmp_path / "predictions.csv"
    _write_predictions(preds, strong | {f"test/no/{i}.npy" for i in range(3)})
    result = evs.main(["--data", str(small_test_set), "--predictions", str(preds), "--bins", "2"])
    assert result["no"] == {"images": 6, "called_no": 0.5}
    low, high = result["sphere"]["bins"]
    assert (low["images"], low["right"], high["images"], high["right"]) == (3, 0.0, 3, 1.0)
    assert result["vort"]["right"] == 0.0 and result["vort"]["bins"][0]["not_called_no"] == 0.0


def test_a_wrong_seed_is_caught_by_the_datasets_params(small_test_set):
    config, seed = evs.dataset_config(small_test_set)
    with pytest.raises(SystemExit, match="re-drawn parameters differ"):
        evs.check_params(small_test_set, "test", 1, np.arange(6), config, seed + 1)
    assert evs.check_params(small_test_set, "test", 1, np.arange(6), config, seed) < 1e-5


def test_predictions_of_another_split_are_refused(small_test_set, tmp_path):
    preds = tmp_path / "p.csv"
    preds.write_text("path,label,p_no,p_sphere,p_vort,pred\nval/no/0.npy,no,1,0,0,no\n")
    with pytest.raises(SystemExit, match="is not test/CLASS/INDEX.npy"):
        evs.read_predictions(preds, "test")
