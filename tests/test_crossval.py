"""dr_core.evaluation.crossval: the folds' test predictions pooled into out-of-fold figures."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dr_core.evaluation.crossval import out_of_fold, read_folds
from dr_core.evaluation.metrics import binary_auc, quadratic_weighted_kappa


def _fold(path: Path, ids: list[str], grades: list[int], preds: list[int], scores: list[float],
          threshold: float) -> Path:
    frame = pd.DataFrame({"id": ids, "patient": [i.split("_")[0] for i in ids], "true_grade": grades,
                          "pred_grade": preds, "prob_0": 0.5, "referable_score": scores})
    frame["referable_pred"] = frame["referable_score"] >= threshold
    frame.to_csv(path, index=False)
    return path


def test_pooled_figures_are_those_of_all_photos_with_each_folds_own_calls(tmp_path):
    a = _fold(tmp_path / "a.csv", ["1_left", "1_right", "2_left", "2_right"], [0, 2, 0, 3], [0, 2, 1, 3],
              [0.1, 0.6, 0.3, 0.9], threshold=0.5)
    # fold b's scores sit lower (another model), and its own threshold is lower too
    b = _fold(tmp_path / "b.csv", ["3_left", "3_right", "4_left", "4_right"], [0, 4, 2, 0], [0, 4, 1, 1],
              [0.05, 0.4, 0.2, 0.25], threshold=0.2)
    table = read_folds([a, b])
    assert table["fold"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    figures = out_of_fold(table, num_classes=5, n_bootstrap=50)
    grades, scores = table["true_grade"].to_numpy(), table["referable_score"].to_numpy()
    assert figures["n_images"] == 8 and figures["n_patients"] == 4 and figures["n_referable"] == 4
    assert figures["referable_auc"] == pytest.approx(binary_auc(grades >= 2, scores), abs=1e-6)
    # 4_left (referable, 0.2) is outranked by the negatives 2_left (0.3, fold a) and 4_right (0.25): 14 of 16 pairs
    assert figures["referable_auc"] == pytest.approx(0.875)
    assert figures["qwk"] == pytest.approx(quadratic_weighted_kappa(grades, table["pred_grade"].to_numpy(), 5),
                                           abs=1e-6)
    # calls are the folds' own: 4_left (0.2 >= b's 0.2) is referred, 4_right (0.25) is a false positive
    assert figures["referable_sensitivity"] == 1.0 and figures["referable_specificity"] == 0.75
    assert figures["fold_referable_auc"] == [1.0, 0.75] and figures["fold_referable_auc_mean"] == 0.875
    assert figures["referable_auc_ci_low"] <= figures["referable_auc"] <= figures["referable_auc_ci_high"]


def test_a_photo_tested_twice_is_refused_with_both_files(tmp_path):
    a = _fold(tmp_path / "a.csv", ["1_left", "1_right"], [0, 2], [0, 2], [0.1, 0.6], 0.5)
    b = _fold(tmp_path / "b.csv", ["1_right", "2_left"], [2, 0], [2, 0], [0.6, 0.1], 0.5)
    with pytest.raises(ValueError, match=r"'1_right' is tested in folds \[0, 1\] \(.*a.csv, .*b.csv\)"):
        read_folds([a, b])


def test_a_file_without_the_evaluate_columns_is_refused(tmp_path):
    path = tmp_path / "p.csv"
    pd.DataFrame({"id": ["1_left"], "true_grade": [0]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"p.csv: no column patient, pred_grade, referable_score, referable_pred"):
        read_folds([path])


def test_no_bootstrap_gives_no_interval():
    table = pd.DataFrame({"id": list("abcd"), "patient": list("abcd"), "true_grade": [0, 0, 2, 3],
                          "pred_grade": [0, 1, 2, 3], "referable_score": [0.1, 0.2, 0.7, 0.8],
                          "referable_pred": [False, False, True, True], "fold": [0, 1, 0, 1]})
    figures = out_of_fold(table, num_classes=5, n_bootstrap=0)
    assert figures["referable_auc"] == 1.0 and figures["referable_auc_ci_low"] is None
    assert np.isclose(figures["fold_qwk_mean"], np.mean(figures["fold_qwk"]))
