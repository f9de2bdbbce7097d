"""Metrics against hand-computed cases and sklearn; operating point; patient bootstrap; calibration."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import (balanced_accuracy_score, cohen_kappa_score, f1_score, precision_recall_fscore_support,
                             roc_auc_score)

from dr_core.config import EvaluateConfig
from dr_core.evaluation import metrics as m
from dr_core.evaluation.bootstrap import GroupSampler, bootstrap_ci
from dr_core.evaluation.calibration import brier_score, expected_calibration_error, log_loss, reliability_bins
from dr_core.evaluation.predictions import Decision, Predictions


def onehot_probs(grades: list[int], num_classes: int = 5, confidence: float = 0.9) -> np.ndarray:
    """Rows putting ``confidence`` on the given grade and the rest spread evenly."""
    probs = np.full((len(grades), num_classes), (1 - confidence) / (num_classes - 1))
    probs[np.arange(len(grades)), grades] = confidence
    return probs


# --- agreement and per-class scores -----------------------------------------------------------

def test_qwk_hand_computed() -> None:
    # 3 grades, y_true = [0, 1, 2, 2], y_pred = [0, 2, 2, 1]
    # observed O has ones at (0,0) (1,2) (2,2) (2,1); both marginals are [1, 1, 2]
    # weights W = (i - j)^2 / 4; sum(W * O) = 1/4 + 1/4 = 0.5
    # expected E = outer([1,1,2], [1,1,2]) / 4; sum(W * E) = (0.25 + 2 + 0.25 + 0.5 + 2 + 0.5) / 4 = 1.375
    # kappa = 1 - 0.5 / 1.375 = 7/11
    y_true, y_pred = np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1])
    assert m.quadratic_weighted_kappa(y_true, y_pred, 3) == pytest.approx(7 / 11)


def test_qwk_perfect_and_reversed() -> None:
    y = np.array([0, 1, 2, 3, 4])
    assert m.quadratic_weighted_kappa(y, y, 5) == pytest.approx(1.0)
    assert m.quadratic_weighted_kappa(y, 4 - y, 5) == pytest.approx(-1.0)
    assert math.isnan(m.quadratic_weighted_kappa(np.zeros(4, int), np.zeros(4, int), 5))


@pytest.mark.parametrize("seed", range(5))
def test_qwk_matches_sklearn_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y_true, y_pred = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    y_pred[:120] = y_true[:120]  # some agreement
    ours = m.quadratic_weighted_kappa(y_true, y_pred, 5)
    ref = cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=list(range(5)))
    assert ours == pytest.approx(ref, abs=1e-12)


def test_qwk_uses_the_full_scale_when_grades_are_missing() -> None:
    # only grades 0, 2 and 4 occur: grade distances must stay 0..4, not collapse to 0..2
    y_true, y_pred = np.array([0, 2, 4, 4, 0]), np.array([0, 4, 4, 2, 2])
    ours = m.quadratic_weighted_kappa(y_true, y_pred, 5)
    assert ours == pytest.approx(cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=range(5)))


def test_accuracy_balanced_and_per_class_by_hand() -> None:
    y_true = np.array([0, 0, 0, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 1])
    assert m.accuracy(y_true, y_pred) == pytest.approx(3 / 5)
    # recalls: grade 0 2/3, grade 1 1/1, grade 2 0/1 -> mean over present grades = 5/9
    assert m.balanced_accuracy(y_true, y_pred, 4) == pytest.approx(5 / 9)
    scores = m.per_class_scores(y_true, y_pred, 4)
    np.testing.assert_allclose(scores["precision"][:3], [1.0, 1 / 3, np.nan])  # grade 2 never predicted
    np.testing.assert_allclose(scores["recall"][:3], [2 / 3, 1.0, 0.0])
    np.testing.assert_allclose(scores["f1"][:3], [0.8, 0.5, 0.0])
    assert scores["support"].tolist() == [3, 1, 1, 0]
    assert math.isnan(scores["f1"][3])  # grade 3 neither true nor predicted
    assert m.f1_macro(y_true, y_pred, 4) == pytest.approx((0.8 + 0.5 + 0.0) / 3)


@pytest.mark.parametrize("seed", range(3))
def test_f1_and_balanced_accuracy_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y_true, y_pred = rng.integers(0, 4, 60), rng.integers(0, 5, 60)  # grade 4 only predicted
    assert m.f1_macro(y_true, y_pred, 5) == pytest.approx(f1_score(y_true, y_pred, average="macro",
                                                                   zero_division=0))
    with pytest.warns(UserWarning):  # sklearn warns that y_pred has a grade absent from y_true
        ref = balanced_accuracy_score(y_true, y_pred)
    assert m.balanced_accuracy(y_true, y_pred, 5) == pytest.approx(ref)
    p, r, _, s = precision_recall_fscore_support(y_true, y_pred, labels=range(4), zero_division=0)
    ours = m.per_class_scores(y_true, y_pred, 5)
    np.testing.assert_allclose(ours["recall"][:4], r)
    np.testing.assert_allclose(np.nan_to_num(ours["precision"][:4]), p)
    assert ours["support"][:4].tolist() == s.tolist()


# --- AUC and referable DR -----------------------------------------------------------------------

def test_binary_auc_by_hand_with_ties() -> None:
    # positives 0.8, 0.4; negatives 0.4, 0.1: pairs (0.8>0.4)=1, (0.8>0.1)=1, (0.4=0.4)=0.5, (0.4>0.1)=1
    assert m.binary_auc(np.array([1, 1, 0, 0]), np.array([0.8, 0.4, 0.4, 0.1])) == pytest.approx(3.5 / 4)
    assert math.isnan(m.binary_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_auc_one_vs_rest_matches_sklearn_and_is_nan_for_absent_grade() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), 80)
    y = rng.integers(0, 5, 80)
    np.testing.assert_allclose(m.auc_one_vs_rest(y, probs).mean(), roc_auc_score(y, probs, multi_class="ovr"))
    y_missing = np.where(y == 3, 2, y)  # grade 3 absent
    auc = m.auc_one_vs_rest(y_missing, probs)
    assert math.isnan(auc[3]) and np.isfinite(np.delete(auc, 3)).all()


def test_referable_score_and_labels() -> None:
    probs = np.array([[0.5, 0.2, 0.2, 0.05, 0.05], [0.0, 0.1, 0.3, 0.3, 0.3]])
    np.testing.assert_allclose(m.referable_score(probs, 2), [0.3, 0.9])
    np.testing.assert_allclose(m.referable_score(probs, 3), [0.1, 0.6])
    assert m.referable_labels(np.array([0, 1, 2, 4]), 2).tolist() == [False, False, True, True]


def test_sensitivity_specificity_and_predictive_values_by_hand() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0], dtype=bool)
    score = np.array([0.9, 0.7, 0.5, 0.2, 0.6, 0.3, 0.1])
    sens, spec = m.sensitivity_specificity(y, score, 0.5)  # called: 0.9 0.7 0.5 | 0.6
    assert (sens, spec) == pytest.approx((3 / 4, 2 / 3))
    ppv, npv = m.predictive_values(y, score, 0.5)
    assert (ppv, npv) == pytest.approx((3 / 4, 2 / 3))


@pytest.mark.parametrize("target", [0.5, 0.8, 0.87, 0.95, 1.0])
def test_operating_point_meets_the_sensitivity_target_with_the_highest_threshold(target: float) -> None:
    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.4
    score = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    threshold = m.choose_operating_point(y, score, "sensitivity", target)
    sens, _ = m.sensitivity_specificity(y, score, threshold)
    assert sens >= target
    higher = np.unique(score[score > threshold])
    if len(higher):  # the next higher candidate must miss the target
        assert m.sensitivity_specificity(y, score, higher[0])[0] < target


def test_operating_point_exact_fraction() -> None:
    # 100 positives at scores 0.01..1.00: 87% sensitivity needs the 87 highest, threshold 0.14
    y = np.ones(100, dtype=bool)
    score = np.arange(1, 101) / 100
    assert m.choose_operating_point(y, score, "sensitivity", 0.87) == pytest.approx(0.14)


def test_operating_point_youden_by_hand() -> None:
    y = np.array([0, 0, 0, 1, 1, 1], dtype=bool)
    score = np.array([0.1, 0.2, 0.6, 0.4, 0.7, 0.9])
    # thresholds: 0.4 -> sens 1, spec 2/3 (J 2/3); 0.7 -> sens 2/3, spec 1 (J 2/3); ties keep the higher
    assert m.choose_operating_point(y, score, "youden") == pytest.approx(0.7)


def test_operating_point_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="no referable case"):
        m.choose_operating_point(np.zeros(5, bool), np.linspace(0, 1, 5))
    with pytest.raises(ValueError, match="valid|must be one of"):
        m.choose_operating_point(np.ones(5, bool), np.linspace(0, 1, 5), mode="youdn")


# --- patient-level bootstrap ------------------------------------------------------------------

def test_group_sampler_keeps_patients_whole() -> None:
    groups = ["a", "a", "a", "b", "c", "c"]
    sampler = GroupSampler(groups)
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = sampler.sample(rng)
        drawn = np.asarray(groups)[idx]
        for g, size in (("a", 3), ("b", 1), ("c", 2)):
            assert (drawn == g).sum() % size == 0  # every draw of a patient brings all its photos
        assert len(set(idx.tolist()) & {0, 1, 2}) in (0, 3)
    np.testing.assert_array_equal(sampler.indices(np.array([2, 0])), [4, 5, 0, 1, 2])


def test_bootstrap_resamples_patients_not_images() -> None:
    # patient A has 9 photos scored 1, nine other patients one photo scored 0 each
    values = np.array([1.0] * 9 + [0.0] * 9)
    patients = ["A"] * 9 + [f"p{i}" for i in range(9)]
    photos = [f"img{i}" for i in range(18)]
    mean = lambda idx: {"mean": float(values[idx].mean())}  # noqa: E731
    by_patient = bootstrap_ci(mean, patients, 2000, seed=0)["mean"]
    by_photo = bootstrap_ci(mean, photos, 2000, seed=0)["mean"]
    # A is left out of ~35% of patient resamples (0.9^10), so the mean is 0 there
    assert by_patient.low == 0.0
    assert by_photo.low > 0.2
    assert by_patient.high - by_patient.low > by_photo.high - by_photo.low


def test_bootstrap_skips_and_counts_undefined_resamples() -> None:
    y = np.array([1, 0, 0, 0, 0, 0])
    patients = list("abcdef")
    fn = lambda idx: {"rate": float(y[idx].mean()) if y[idx].any() else math.nan}  # noqa: E731
    ci = bootstrap_ci(fn, patients, 500, seed=3)["rate"]
    assert ci.n_skipped > 0 and ci.n_valid + ci.n_skipped == 500
    assert ci.low > 0  # undefined resamples did not enter as zeros
    again = bootstrap_ci(fn, patients, 500, seed=3)["rate"]
    assert again == ci  # seeded


# --- calibration ------------------------------------------------------------------------------

def test_ece_zero_when_accuracy_equals_confidence() -> None:
    # 10 photos at confidence 0.7, 7 of them right: accuracy equals confidence in the only bin
    grades = [0] * 10
    probs = onehot_probs(grades, confidence=0.7)
    y = np.array([0] * 7 + [1] * 3)
    assert expected_calibration_error(probs, y) == pytest.approx(0.0, abs=1e-12)


def test_ece_overconfident_by_hand() -> None:
    probs = onehot_probs([0] * 10 + [1] * 10, confidence=0.9)  # all at confidence 0.9
    y = np.array([0] * 5 + [2] * 5 + [1] * 5 + [3] * 5)  # half right
    assert expected_calibration_error(probs, y) == pytest.approx(0.4)
    bins = reliability_bins(probs, y)
    assert bins.count.sum() == 20 and bins.count[13] == 20  # 0.9 is in (13/15, 14/15]
    assert bins.accuracy[13] == pytest.approx(0.5) and bins.confidence[13] == pytest.approx(0.9)


def test_ece_two_bins_weighted_by_count() -> None:
    probs = np.vstack([onehot_probs([0] * 4, 5, 0.6), onehot_probs([0] * 6, 5, 0.95)])
    y = np.array([0, 0, 1, 1] + [0] * 6)  # bin 0.6: acc 0.5 (gap 0.1); bin 0.95: acc 1 (gap 0.05)
    assert expected_calibration_error(probs, y) == pytest.approx(0.4 * 0.1 + 0.6 * 0.05)


def test_brier_and_log_loss_by_hand() -> None:
    probs = np.array([[0.5, 0.5], [1.0, 0.0]])
    y = np.array([0, 0])
    assert brier_score(probs, y) == pytest.approx((0.25 + 0.25 + 0.0) / 2)
    assert log_loss(probs, y) == pytest.approx(math.log(2) / 2)


# --- compute_metrics ------------------------------------------------------------------------

def test_compute_metrics_keys_values_and_json() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 120)
    probs = 0.6 * onehot_probs(list(y), confidence=0.8) + 0.4 * rng.dirichlet(np.ones(5), 120)
    patients = [f"p{i // 2}" for i in range(120)]
    out = m.compute_metrics(Predictions(list(range(120)), patients, y, probs), Decision(threshold=0.5),
                            EvaluateConfig(referable_grade=2, bootstrap=50), seed=0)
    for key in ("qwk", "accuracy", "balanced_accuracy", "f1_macro", "auc_macro", "referable_auc",
                "referable_sensitivity", "referable_specificity", "referable_threshold", "ece",
                "qwk_ci_low", "qwk_ci_high", "referable_auc_ci_low", "referable_auc_ci_high",
                "referable_sensitivity_ci_low", "referable_specificity_ci_high", "n_images", "n_patients"):
        assert key in out, key
    assert out["n_images"] == 120 and out["n_patients"] == 60
    assert out["qwk"] == pytest.approx(cohen_kappa_score(y, probs.argmax(1), weights="quadratic"), abs=1e-6)
    assert out["qwk_ci_low"] <= out["qwk"] <= out["qwk_ci_high"]
    assert set(out["per_class"]) == {"No DR", "Mild", "Moderate", "Severe", "Proliferative"}
    assert set(out["per_class"]["Mild"]) == {"precision", "recall", "f1", "support", "auc"}
    assert sum(c["support"] for c in out["per_class"].values()) == 120
    json.loads(json.dumps(out, allow_nan=False))  # no NaN, no numpy types


def test_compute_metrics_absent_grade_gives_none_not_a_crash() -> None:
    y = np.array([0, 0, 1, 2, 2, 4, 4, 0])  # grade 3 absent
    probs = onehot_probs([0, 1, 1, 2, 3, 4, 4, 0])
    out = m.compute_metrics(Predictions(list(range(8)), list("abcdefgh"), y, probs), Decision(0.5),
                            EvaluateConfig(referable_grade=2, bootstrap=20), seed=0)
    assert out["per_class"]["Severe"]["auc"] is None and out["per_class"]["Severe"]["recall"] is None
    assert out["auc_macro"] is not None
    json.dumps(out, allow_nan=False)


def test_validate_predictions_names_the_row() -> None:
    with pytest.raises(ValueError, match="row 1: grade must be 0..4, got 7"):
        m.validate_predictions(np.array([0, 7]), onehot_probs([0, 1]))
    with pytest.raises(ValueError, match="row 1: patient id is missing"):
        m.validate_predictions(np.array([0, 1]), onehot_probs([0, 1]), ["a", float("nan")])
    bad = onehot_probs([0, 1])
    bad[1] *= 3
    with pytest.raises(ValueError, match="row 1: probabilities"):
        m.validate_predictions(np.array([0, 1]), bad)


def test_grade_names() -> None:
    assert m.grade_names(5)[0] == "No DR" and m.grade_names(5)[4] == "Proliferative"
    assert m.grade_names(3) == ["grade 0", "grade 1", "grade 2"]


def _qwk_reference(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> float:
    """The hand-written QWK that scikit-learn replaced, kept here to compare figures."""
    observed = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k).astype(float)
    grades = np.arange(k)
    weights = (grades[:, None] - grades[None, :]) ** 2 / (k - 1) ** 2
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    chance = (weights * expected).sum()
    return float("nan") if chance == 0 else 1 - (weights * observed).sum() / chance


def test_library_metrics_give_the_hand_written_figures_on_fixed_inputs():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 40))
        y_true = rng.integers(0, 5, n)
        y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, 5, n))
        expected = _qwk_reference(y_true, y_pred, 5)
        got = m.quadratic_weighted_kappa(y_true, y_pred, 5)
        assert (np.isnan(expected) and np.isnan(got)) or abs(got - expected) < 1e-12
    same = np.array([2, 2, 2])
    assert np.isnan(m.quadratic_weighted_kappa(same, same, 5))  # no chance disagreement: undefined


def test_sensitivity_each_source_meets_the_target_in_every_population():
    """One threshold: pooled, the larger source's easy positives hide the smaller one's misses; per source,
    the threshold drops until the harder source reaches the target too."""
    from dr_core.evaluation.metrics import choose_operating_point, sensitivity_specificity

    rng = np.random.default_rng(0)
    y = np.r_[np.ones(100, bool), np.zeros(100, bool), np.ones(20, bool), np.zeros(20, bool)]
    score = np.r_[rng.uniform(0.6, 1.0, 100), rng.uniform(0.0, 0.5, 100),   # source a: well separated
                  rng.uniform(0.2, 0.7, 20), rng.uniform(0.0, 0.3, 20)]     # source b: lower scores
    groups = np.array(["a"] * 200 + ["b"] * 40)
    pooled = choose_operating_point(y, score, "sensitivity", 0.9)
    each = choose_operating_point(y, score, "sensitivity_each_source", 0.9, groups)
    sens_b = lambda t: sensitivity_specificity(y[groups == "b"], score[groups == "b"], t)[0]
    assert sens_b(pooled) < 0.9 <= sens_b(each) and each < pooled
    for g in "ab":
        assert sensitivity_specificity(y[groups == g], score[groups == g], each)[0] >= 0.9
    assert choose_operating_point(y, score, "sensitivity_each_source", 0.9) == pooled  # no groups: pooled
