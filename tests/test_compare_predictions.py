"""benchmarks/compare_predictions.py: a paired comparison of two models on the same images."""

import json
from pathlib import Path

import numpy as np
import pytest
from bench_scripts import load_benchmark
from sklearn.metrics import roc_auc_score

from darklens import CLASSES
from darklens.errors import DarklensError
from darklens.evaluation.report import predictions_csv, read_predictions_csv

cmp = load_benchmark("compare_predictions")


def _write(folder: Path, labels: np.ndarray, probs: np.ndarray, names=None, data="/d") -> Path:
    """An evaluate output folder: predictions.csv (the real writer) and a report.json."""
    folder.mkdir()
    names = names or [f"test/{CLASSES[y]}/{i}.npy" for i, y in enumerate(labels)]
    (folder / "predictions.csv").write_text(predictions_csv(names, probs, labels))
    (folder / "report.json").write_text(json.dumps({"data": data, "split": "test"}))
    return folder / "predictions.csv"


@pytest.fixture
def two_models(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 100)
    logits_a = rng.normal(size=(300, 3))
    logits_a[np.arange(300), labels] += 1.0
    logits_b = logits_a.copy()
    logits_b[np.arange(300), labels] += 1.5  # B: the same model, surer of the right class
    soft = [np.exp(x) / np.exp(x).sum(1, keepdims=True) for x in (logits_a, logits_b)]
    return (labels, soft, _write(tmp_path / "a", labels, soft[0]),
            _write(tmp_path / "b", labels, soft[1]))


def test_the_reader_returns_what_evaluate_wrote(two_models):
    labels, (pa, _), a, _ = two_models
    paths, read_labels, read_probs = read_predictions_csv(a)
    assert paths[:2] == ["test/no/0.npy", "test/no/1.npy"]
    assert np.array_equal(read_labels, labels) and np.array_equal(read_probs, pa)


def test_numbers_match_scikit_learn_and_count_the_images_that_differ(two_models):
    labels, (pa, pb), a, b = two_models
    r = cmp.compare(a, b, n_bootstrap=300)
    for name, p in (("a", pa), ("b", pb), ("average", (pa + pb) / 2)):
        assert r[name]["accuracy"] == pytest.approx((p.argmax(1) == labels).mean())
        auc = np.mean([roc_auc_score(labels == k, p[:, k]) for k in range(3)])
        assert r[name]["auc_macro"] == pytest.approx(auc)
    d = r["b_minus_a"]
    right_a, right_b = pa.argmax(1) == labels, pb.argmax(1) == labels
    assert d["only_a_right"] == 0 and d["only_b_right"] == int((right_b & ~right_a).sum()) > 0
    assert d["accuracy"] == pytest.approx((d["only_b_right"] - d["only_a_right"]) / 300)
    # B is right wherever A is, and on more: a paired interval of real width lies above zero
    assert 0 < d["accuracy_ci95"][0] < d["accuracy"] < d["accuracy_ci95"][1]
    assert 0 < d["auc_macro_ci95"][0] < d["auc_macro"] < d["auc_macro_ci95"][1]


def test_resamples_are_paired_and_the_interval_is_the_central_95_percent(two_models):
    labels, (pa, pb), a, b = two_models
    diffs = cmp.paired_differences(labels, pa, pb, n_bootstrap=400, seed=3)
    rng = np.random.default_rng(3)  # the same draws, one resample at a time, with scikit-learn
    for row in diffs[:5]:
        i = rng.integers(0, 300, 300)
        acc = (pb[i].argmax(1) == labels[i]).mean() - (pa[i].argmax(1) == labels[i]).mean()
        auc = [np.mean([roc_auc_score(labels[i] == k, p[i, k]) for k in range(3)])
               for p in (pb, pa)]
        assert row == pytest.approx([acc, auc[0] - auc[1]])
    assert diffs.shape == (400, 2)  # exactly the resamples asked for, across chunks of 64
    r = cmp.compare(a, b, n_bootstrap=400, seed=3)
    d = r["b_minus_a"]
    assert d["accuracy_ci95"] == pytest.approx(np.percentile(diffs[:, 0], [2.5, 97.5]).tolist())
    assert r["n_bootstrap_auc"] == 400 and r["seed"] == 3
    assert cmp.compare(a, b, n_bootstrap=400, seed=4)["b_minus_a"]["accuracy_ci95"] != \
        d["accuracy_ci95"]


def test_small_resamples_average_the_classes_they_hold(tmp_path):
    labels = np.array([0, 1, 2, 0, 1, 2])
    probs = np.full((6, 3), 0.1)
    probs[np.arange(6), labels] = 0.8
    probs[0] = [0.1, 0.8, 0.1]  # one "no" image called "sphere"
    a = _write(tmp_path / "a", labels, probs)
    probs_b = probs.copy()
    probs_b[0] = [0.8, 0.1, 0.1]
    b = _write(tmp_path / "b", labels, probs_b)
    r = cmp.compare(a, b, n_bootstrap=300, seed=0)
    # many resamples of six images lack a class; they still count, over the classes they hold
    assert 250 < r["n_bootstrap_auc"] <= 300
    assert np.isfinite(r["b_minus_a"]["auc_macro_ci95"]).all()
    one_class = _write(tmp_path / "one", np.zeros(6, int), np.tile([0.8, 0.1, 0.1], (6, 1)))
    with pytest.raises(DarklensError, match="no sphere, vort images"):
        cmp.compare(one_class, one_class)


def test_a_model_against_itself_differs_by_exactly_zero(two_models):
    _, _, a, _ = two_models
    d = cmp.compare(a, a, n_bootstrap=100)["b_minus_a"]
    assert d["accuracy_ci95"] == [0.0, 0.0] and d["auc_macro_ci95"] == [0.0, 0.0]


def test_other_images_other_data_and_bad_files_are_refused_in_one_line(two_models, tmp_path,
                                                                      capsys):
    labels, (pa, _), a, _ = two_models
    names = [f"test/{CLASSES[y]}/{i}.npy" for i, y in enumerate(labels)]
    shuffled = _write(tmp_path / "s", labels, pa, names=names[1:] + names[:1])
    with pytest.raises(DarklensError, match="not the same image names"):
        cmp.compare(a, shuffled)
    other_sim = _write(tmp_path / "o", labels, pa, data="/another/simulation")
    with pytest.raises(DarklensError, match="scored different data"):
        cmp.compare(a, other_sim)
    same_folder_typed_otherwise = _write(tmp_path / "t", labels, pa, data="/d/")
    assert cmp.compare(a, same_folder_typed_otherwise, n_bootstrap=10)["n"] == 300
    bad = tmp_path / "bad.csv"
    header, first, *rest = a.read_text().splitlines()

    def with_first_row(field: int, value: str) -> str:
        row = first.split(",")
        row[field] = value
        return "\n".join([header, ",".join(row), *rest]) + "\n"

    for text, message in [("path,label\nx,no\n", "not an evaluate predictions.csv"),
                          (with_first_row(2, "abc"), "row 2: could not convert"),
                          (with_first_row(1, "cdm"), "row 2: label 'cdm'"),
                          (with_first_row(3, "nan"), "row 2: a probability is NaN"),
                          ("\n".join([header, first + ",x", *rest]), "row 2: 7 fields"),
                          ("\n".join([header, first, first, *rest]), "row 3: .* appears twice"),
                          (with_first_row(5, "vort"), "row 2: pred 'vort' is not the most"),
                          (with_first_row(2, "0.95"), "row 2: probabilities sum to"),
                          (a.read_text().replace("label,", "", 1), "written by darklens predict"),
                          (header + '\n"' + "x" * 140_000, "cannot read \\(line")]:
        bad.write_text(text)
        with pytest.raises(DarklensError, match=f"bad.csv: {message}"):
            cmp.compare(a, bad)
    with pytest.raises(DarklensError, match="at least one resample"):
        cmp.compare(a, a, n_bootstrap=0)
    assert cmp.main([str(a), str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv: cannot read" in capsys.readouterr().err


def test_the_command_line_writes_its_json(two_models, tmp_path, capsys):
    _, _, a, b = two_models
    out = tmp_path / "cmp.json"
    assert cmp.main([str(a), str(b), "--bootstrap", "50", "--json", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["n"] == 300 and written["b_minus_a"]["only_b_right"] > 0
    assert "B - A    accuracy +" in capsys.readouterr().out
    assert cmp.main([str(a), str(b), "--json", str(tmp_path / "no" / "x.json")]) == 2
