"""compute_metrics against scikit-learn (called directly) and hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

from darklens.evaluation import compute_metrics
from darklens.evaluation.metrics import expected_calibration_error, json_safe

CLASS_NAMES = ("no", "sphere", "vort")


def _random_case(seed: int, n: int = 300, quantise: int | None = None):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    if quantise:  # many exact ties in the scores
        probs = np.round(probs * quantise) / quantise
    return y, probs


def _assert_matches_sklearn(y, probs):
    m = compute_metrics(y, probs, n_bootstrap=0)
    pred = probs.argmax(1)
    one_hot = np.eye(3)[y]
    assert m["n"] == len(y)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert m["macro_f1"] == pytest.approx(
        f1_score(y, pred, average="macro", zero_division=0), abs=1e-12
    )
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
    defined = []
    for k, name in enumerate(CLASS_NAMES):
        if 0 < (y == k).sum() < len(y):
            ref = roc_auc_score(y == k, probs[:, k])
            assert m["auc"][name] == pytest.approx(ref, abs=1e-12), name
            defined.append(ref)
        else:
            assert m["auc"][name] is None, name
    assert m["auc"]["micro"] == pytest.approx(
        roc_auc_score(one_hot, probs, average="micro"), abs=1e-12
    )
    if defined:
        assert m["auc"]["macro"] == pytest.approx(np.mean(defined), abs=1e-12)
    else:
        assert m["auc"]["macro"] is None
    return m


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_scores_match_sklearn(seed):
    y, probs = _random_case(seed)
    m = _assert_matches_sklearn(y, probs)
    # with every class present, macro also equals sklearn's one-vs-rest multiclass macro
    assert m["auc"]["macro"] == pytest.approx(
        roc_auc_score(y, probs, multi_class="ovr", average="macro"), abs=1e-12
    )
    assert m["auc"]["macro"] == pytest.approx(
        roc_auc_score(np.eye(3)[y], probs, average="macro"), abs=1e-12
    )


def test_tied_scores_match_sklearn():
    y, probs = _random_case(3, n=400, quantise=4)  # scores in {0, .25, .5, .75, 1}
    assert len(np.unique(probs[:, 1])) <= 5
    _assert_matches_sklearn(y, probs)


def test_all_scores_tied_give_half():
    y = np.array([0, 1, 2, 0, 1, 2])
    m = _assert_matches_sklearn(y, np.full((6, 3), 1 / 3))
    assert m["auc"]["sphere"] == 0.5 and m["auc"]["micro"] == 0.5


def test_perfect_and_inverted_scores():
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    perfect = np.eye(3)[y] * 0.8 + 0.1
    m = _assert_matches_sklearn(y, perfect)
    assert m["accuracy"] == 1.0 and m["auc"]["macro"] == 1.0 and m["auc"]["micro"] == 1.0
    inverted = 1.0 - perfect
    m = _assert_matches_sklearn(y, inverted)
    assert m["auc"]["no"] == 0.0 and m["auc"]["macro"] == 0.0


@pytest.mark.parametrize("absent", [0, 1, 2])
def test_one_class_absent(absent):
    y, probs = _random_case(4)
    keep = y != absent
    m = _assert_matches_sklearn(y[keep], probs[keep])
    assert m["auc"][CLASS_NAMES[absent]] is None
    others = [roc_auc_score(y[keep] == k, probs[keep, k]) for k in range(3) if k != absent]
    assert m["auc"]["macro"] == pytest.approx(np.mean(others), abs=1e-12)
    json.dumps(m, allow_nan=False)  # None, never NaN, in the JSON


def test_single_class_only():
    y = np.array([2, 2, 2, 2])
    probs = np.array([[0.1, 0.2, 0.7], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.3, 0.4, 0.3]])
    m = _assert_matches_sklearn(y, probs)
    assert m["auc"]["macro"] is None
    assert m["ci95"] == {"accuracy": None, "macro_auc": None}
    m = compute_metrics(y, probs, n_bootstrap=50)
    assert m["ci95"]["macro_auc"] is None and m["ci95"]["accuracy"] is not None


def test_ece_hand_computed():
    # confidences 0.9, 0.9, 0.6, 0.4: bins (0.8667, 0.9333] twice, (0.5333, 0.6], (0.3333, 0.4]
    probs = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.6, 0.3, 0.1], [0.3, 0.3, 0.4]])
    y = np.array([0, 0, 0, 2])  # right, wrong, right, right
    # bin 0.9: acc 0.5, conf 0.9 -> 2/4 * 0.4 ; bin 0.6: 1/4 * 0.4 ; bin 0.4: 1/4 * 0.6
    expected = 0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.6
    assert expected_calibration_error(y, probs) == pytest.approx(expected, abs=1e-12)
    assert compute_metrics(y, probs, n_bootstrap=0)["ece"] == pytest.approx(expected, abs=1e-12)


def test_ece_bin_edges_are_right_closed():
    # 0.6 sits exactly on an edge (9/15): it must share a bin with 0.55, not with 0.62
    probs = np.array([[0.6, 0.2, 0.2], [0.55, 0.25, 0.2], [0.62, 0.2, 0.18]])
    y = np.array([0, 1, 0])  # right, wrong, right
    expected = (2 / 3) * abs(0.5 - 0.575) + (1 / 3) * abs(1.0 - 0.62)
    assert expected_calibration_error(y, probs) == pytest.approx(expected, abs=1e-12)


def test_ece_perfectly_calibrated_is_zero():
    probs = np.tile([0.5, 0.25, 0.25], (4, 1))
    y = np.array([0, 0, 1, 2])  # half right at confidence 0.5
    assert expected_calibration_error(y, probs) == pytest.approx(0.0, abs=1e-12)


def test_bootstrap_interval_against_direct_resampling():
    y, probs = _random_case(5, n=150)
    m = compute_metrics(y, probs, n_bootstrap=100, seed=7)
    # independent recomputation with sklearn on the same resample indices (drawn in the
    # library's chunks of 64 rows; a generator's stream does not depend on the chunking)
    rng = np.random.default_rng(7)
    idx = np.concatenate([rng.integers(0, 150, size=(64, 150)) for _ in range(2)])[:100]
    accs = [accuracy_score(y[i], probs[i].argmax(1)) for i in idx]
    macs = [np.mean([roc_auc_score(y[i] == k, probs[i, k]) for k in range(3)]) for i in idx]
    assert m["ci95"]["accuracy"] == pytest.approx(list(np.percentile(accs, [2.5, 97.5])))
    assert m["ci95"]["macro_auc"] == pytest.approx(list(np.percentile(macs, [2.5, 97.5])))
    lo, hi = m["ci95"]["accuracy"]
    assert lo < m["accuracy"] < hi


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        compute_metrics(np.array([0, 1]), np.ones((2, 2)))
    with pytest.raises(ValueError):
        compute_metrics(np.array([0, 3]), np.ones((2, 3)))
    with pytest.raises(ValueError):
        compute_metrics(np.array([0]), np.full((1, 3), np.nan))


def test_json_safe():
    assert json_safe({"a": [float("nan"), 1.0], "b": float("inf")}) == {"a": [None, 1.0], "b": None}
