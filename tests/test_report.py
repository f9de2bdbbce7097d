"""write_evaluation: every file written, metrics.json shaped for DVC, predictions consistent."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from dr_core.config import EvaluateConfig
from dr_core.evaluation.predictions import Decision, Predictions
from dr_core.evaluation.report import OUTPUT_FILES, choose_threshold, write_evaluation


def fake_split(n: int, rng: np.random.Generator, num_classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Grades and noisy Dirichlet probabilities centred near the true grade."""
    y = rng.integers(0, num_classes, n)
    latent = y + rng.normal(0, 0.7, n)
    grades = np.arange(num_classes)
    concentration = 5 * np.exp(-(grades[None] - latent[:, None]) ** 2) + 0.3
    probs = np.array([rng.dirichlet(c) for c in concentration])
    return y, probs


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, np.ndarray]:
    """One evaluation written once and inspected by several tests (plotting takes a second)."""
    rng = np.random.default_rng(0)
    y, probs = fake_split(80, rng)
    val_y, val_probs = fake_split(60, rng)
    ids = [f"{i // 2}_{'left' if i % 2 == 0 else 'right'}" for i in range(80)]
    patients = [str(i // 2) for i in range(80)]
    out = tmp_path_factory.mktemp("eval") / "results"
    cfg = EvaluateConfig(bootstrap=30)
    point = choose_threshold(val_y, val_probs, cfg)
    metrics = write_evaluation(out, Predictions(ids, patients, y, probs), Decision.from_operating_point(point), cfg,
                               seed=0)
    return out, metrics, probs


def test_every_file_is_written(evaluation) -> None:
    out, _, _ = evaluation
    for name in OUTPUT_FILES + tuple(f"plots/roc_grade_{k}.csv" for k in range(5)):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for png in ("confusion_matrix.png", "roc_curves.png", "calibration.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_json_is_nested_under_the_split(evaluation) -> None:
    out, metrics, _ = evaluation
    data = json.loads((out / "metrics.json").read_text())
    assert list(data) == ["test"]
    test = data["test"]
    for key in ("qwk", "accuracy", "balanced_accuracy", "f1_macro", "auc_macro", "referable_auc",
                "referable_sensitivity", "referable_specificity", "referable_threshold", "ece",
                "qwk_ci_low", "qwk_ci_high", "n_images", "n_patients", "per_class"):
        assert key in test, key
    assert test["n_images"] == 80 and test["n_patients"] == 40
    assert test == metrics
    # the threshold was chosen on validation to reach the target sensitivity there
    assert test["val_referable_sensitivity"] >= EvaluateConfig().target_sensitivity


def test_prefix_none_writes_flat_metrics(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y, probs = fake_split(30, rng)
    write_evaluation(tmp_path, Predictions(list(range(30)), list(range(30)), y, probs), Decision(0.5),
                     EvaluateConfig(bootstrap=0), prefix=None)
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert "qwk" in data and data["qwk_ci_low"] is None  # no bootstrap: no interval
    text = (tmp_path / "classification_report.txt").read_text()
    assert "no confidence intervals" in text and "not tuned on these photos" in text
    assert data["referable_threshold"] == 0.5 and "val_referable_sensitivity" not in data


def test_predictions_csv_matches_probs_and_threshold(evaluation) -> None:
    out, metrics, probs = evaluation
    table = pd.read_csv(out / "predictions.csv", dtype={"id": str, "patient": str})
    assert list(table.columns) == ["id", "patient", "true_grade", "pred_grade", "prob_0", "prob_1", "prob_2",
                                   "prob_3", "prob_4", "referable_score", "referable_pred", "referral_threshold"]
    assert (table["referable_pred"] == (table["referable_score"] >= table["referral_threshold"])).all()
    assert len(table) == 80 and table["id"].iloc[1] == "0_right"
    np.testing.assert_allclose(table[[f"prob_{k}" for k in range(5)]].to_numpy(), probs, atol=1e-6)
    assert (table["pred_grade"] == probs.argmax(1)).all()
    np.testing.assert_allclose(table["referable_score"], probs[:, 2:].sum(1), atol=1e-6)
    called = table["referable_score"] >= metrics["referable_threshold"] - 1e-6
    assert (table["referable_pred"] == called).mean() > 0.98  # rounding at the threshold only
    assert int(table["referable_pred"].sum()) == metrics["referable_tp"] + metrics["referable_fp"]


def test_predictions_csv_keeps_tiny_scores_apart(tmp_path: Path) -> None:
    """A regression head's referable scores reach 1e-7; written to six decimals they would tie, and
    an AUC recomputed from the file (out-of-fold pooling) would differ from metrics.json's."""
    rng = np.random.default_rng(3)
    y = np.repeat([0, 2], 30)
    score = np.exp(rng.normal(-12 + 3 * (y > 0), 2.0)).astype(np.float32)  # mostly below 1e-4
    probs = np.zeros((60, 5), np.float32)
    probs[:, 2], probs[:, 0] = score, 1 - score
    assert roc_auc_score(y >= 2, np.round(score, 6)) != pytest.approx(roc_auc_score(y >= 2, score), abs=1e-3)
    metrics = write_evaluation(tmp_path, Predictions(list(range(60)), list(range(60)), y, probs, score), Decision(1e-5),
                               EvaluateConfig(bootstrap=0))
    table = pd.read_csv(tmp_path / "predictions.csv")
    assert (table["referable_score"].to_numpy(np.float32) == score).all()  # float32 round-trips exactly
    assert roc_auc_score(table["true_grade"] >= 2, table["referable_score"]) == pytest.approx(
        metrics["referable_auc"], abs=1e-6)


def test_dvc_plot_data(evaluation) -> None:
    out, metrics, _ = evaluation
    roc = pd.read_csv(out / "plots" / "roc_referable.csv")
    assert list(roc.columns) == ["fpr", "tpr"]
    assert roc["fpr"].is_monotonic_increasing and roc["tpr"].is_monotonic_increasing
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(metrics["referable_auc"], abs=1e-4)
    calib = pd.read_csv(out / "plots" / "calibration.csv")
    assert {"confidence", "accuracy", "count"} <= set(calib.columns)
    assert calib["count"].sum() == 80


def test_choose_threshold_meets_the_target_on_val_and_is_exact() -> None:
    rng = np.random.default_rng(4)
    val_y, val_probs = fake_split(200, rng)
    for mode in ("sensitivity", "youden"):
        point = choose_threshold(val_y, val_probs, EvaluateConfig(operating_point=mode, target_sensitivity=0.9))
        json.dumps(point, allow_nan=False)
        score = val_probs[:, 2:].sum(1)
        called = score[val_y >= 2] >= point["threshold"]
        assert called.mean() == pytest.approx(point["val_sensitivity"])
        assert point["val_n_referable"] == int((val_y >= 2).sum())
        assert point["val_auc"] == pytest.approx(roc_auc_score(val_y >= 2, score))
        assert point["val_qwk"] == pytest.approx(cohen_kappa_score(val_y, val_probs.argmax(1), weights="quadratic"))
        if mode == "sensitivity":
            assert point["val_sensitivity"] >= 0.9 and point["target_sensitivity"] == 0.9
        else:
            assert point["target_sensitivity"] is None


def test_val_qwk_follows_the_grade_rule_and_reaches_metrics_json(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    val_y, val_probs = fake_split(120, rng)
    cuts = [0.5, 1.5, 2.5, 3.5]
    point = choose_threshold(val_y, val_probs, EvaluateConfig(), cuts)
    expected = (val_probs * np.arange(5)).sum(1)
    by_cuts = np.searchsorted(cuts, expected, side="right")
    assert point["val_qwk"] == pytest.approx(cohen_kappa_score(val_y, by_cuts, weights="quadratic"))
    y, probs = fake_split(40, rng)
    metrics = write_evaluation(tmp_path, Predictions(list(range(40)), list(range(40)), y, probs),
                               Decision(point["threshold"], cuts, point), EvaluateConfig(bootstrap=0))
    assert metrics["val_referable_auc"] == point["val_auc"] and metrics["val_qwk"] == point["val_qwk"]
    assert "validation AUC" in (tmp_path / "classification_report.txt").read_text()


def test_a_given_referable_score_replaces_the_one_probs_imply(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    y, probs = fake_split(60, rng)
    val_y, val_probs = fake_split(50, rng)
    cfg = EvaluateConfig(bootstrap=0)
    val_score, score = rng.random(50), rng.random(60)
    point = choose_threshold(val_y, val_probs, cfg, val_score=val_score)
    assert point["val_auc"] == pytest.approx(roc_auc_score(val_y >= 2, val_score), abs=1e-6)
    metrics = write_evaluation(tmp_path, Predictions(list(range(60)), list(range(60)), y, probs, score),
                               Decision.from_operating_point(point), cfg)
    plain = write_evaluation(tmp_path / "plain", Predictions(list(range(60)), list(range(60)), y, probs),
                             Decision.from_operating_point(point), cfg)
    assert metrics["referable_auc"] == pytest.approx(roc_auc_score(y >= 2, score), abs=1e-6)
    assert metrics["referable_auc"] != plain["referable_auc"] and metrics["qwk"] == plain["qwk"]
    table = pd.read_csv(tmp_path / "predictions.csv")
    assert np.allclose(table["referable_score"], score, atol=1e-6)
    assert (table["referable_pred"] == (score >= point["threshold"])).all()
    with pytest.raises(ValueError, match="referable score has shape"):
        write_evaluation(tmp_path, Predictions(list(range(60)), list(range(60)), y, probs, score[:10]), Decision(0.5),
                         cfg)


def test_report_text_has_the_referable_block(evaluation) -> None:
    out, metrics, _ = evaluation
    text = (out / "classification_report.txt").read_text()
    for needle in ("Quadratic weighted kappa", "Proliferative", "Referable DR (grade >= 2: Moderate or worse)",
                   "operating point", "validation sens / spec", "specificity", "bootstrap over patients",
                   f"{metrics['referable_threshold']:.4f}"):
        assert needle in text, needle
    assert text.isascii()


def test_other_number_of_classes_and_absent_grade(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    y, probs = fake_split(40, rng, num_classes=3)
    y[y == 1] = 0  # grade 1 absent from the evaluated split
    val_y, val_probs = fake_split(40, rng, num_classes=3)
    cfg = EvaluateConfig(bootstrap=10)
    point = choose_threshold(val_y, val_probs, cfg)
    metrics = write_evaluation(tmp_path, Predictions(list(range(40)), list(range(40)), y, probs),
                               Decision(point["threshold"]), cfg)
    assert set(metrics["per_class"]) == {"grade 0", "grade 1", "grade 2"}
    assert metrics["per_class"]["grade 1"]["auc"] is None
    assert pd.read_csv(tmp_path / "plots" / "roc_grade_1.csv").empty


def test_mismatched_lengths_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    y, probs = fake_split(10, rng)
    with pytest.raises(ValueError, match="9 ids for 10 rows"):
        write_evaluation(tmp_path, Predictions(list(range(9)), list(range(10)), y, probs), Decision(0.5),
                         EvaluateConfig())


def test_dvc_tracks_only_the_headline_figures_overall_and_per_source():
    from dr_core.evaluation.report import headline

    report = {"test": {"qwk": 0.7, "qwk_ci_low": 0.6, "referable_auc": 0.9, "referable_sensitivity": 0.8,
                       "referable_specificity": 0.85, "n_images": 10, "per_class": {"No DR": {"f1": 0.9}},
                       "odir": {"qwk": 0.6, "referable_auc": 0.8, "n_images": 4, "referable_auc_ci_low": 0.7}},
              "val": {"qwk": 0.75, "referable_auc": 0.91}}
    assert headline(report) == {
        "test": {"qwk": 0.7, "referable_auc": 0.9, "referable_sensitivity": 0.8, "referable_specificity": 0.85,
                 "odir": {"qwk": 0.6, "referable_auc": 0.8}},
        "val": {"qwk": 0.75, "referable_auc": 0.91}}
