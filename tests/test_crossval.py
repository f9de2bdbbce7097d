"""dr_core.evaluation.crossval and the pool stage: the folds' test predictions pooled into out-of-fold figures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from dr_core.evaluation.crossval import out_of_fold, pool_folds, read_folds
from stages import pool
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


def _evaluated_fold(folder: Path, ids: list[str], grades: list[int], val_auc: float) -> Path:
    """A fold's evaluate output: predictions.csv (perfect grades, referable scored 0.9) and metrics.json."""
    folder.mkdir(parents=True)
    score = [0.9 if g >= 2 else 0.1 + 0.1 * n for n, g in enumerate(grades)]
    _fold(folder / "predictions.csv", ids, grades, grades, score, threshold=0.5)
    (folder / "metrics.json").write_text(json.dumps({"test": {"val_referable_auc": val_auc, "val_qwk": 0.5}}))
    return folder


def test_the_pool_stage_writes_pooled_headline_metrics_and_a_line_per_fold(tmp_path):
    grades = {"1_left": 0, "1_right": 2, "2_left": 0, "3_left": 3, "3_right": 0, "2_right": 0}
    for k, ids in enumerate((["1_left", "1_right", "2_left"], ["3_left", "3_right", "2_right"])):
        _evaluated_fold(tmp_path / "results" / f"fold{k}", ids, [grades[i] for i in ids], 0.75 + 0.1 * k)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"cv": {"folds": [0, 1]}, "evaluate": {"bootstrap": 20}}))
    metrics, table = tmp_path / "cv" / "metrics.json", tmp_path / "cv" / "cv.md"
    assert pool.main(["--results", str(tmp_path / "results"), "--metrics", str(metrics), "--table", str(table),
                      "--params", str(params)]) == 0
    pooled = json.loads(metrics.read_text())
    assert pooled["n_images"] == 6 and pooled["referable_auc"] == 1.0 and pooled["referable_sensitivity"] == 1.0
    assert pooled["referable_auc_ci_low"] <= 1.0 and "fold_referable_auc_mean" not in pooled  # headline only
    assert pooled["folds"] == {"n_images": [3, 3], "referable_auc": [1.0, 1.0], "qwk": [1.0, 1.0],
                               "val_referable_auc": [0.75, 0.85], "val_qwk": [0.5, 0.5]}
    text = table.read_text()
    assert text.startswith("Out of fold: 6 photographs of 3 patients (2 referable), each tested once in 2 folds")
    assert "| 1 | 3 | 1.000 | 1.000 | 0.850 | 0.500 |" in text


def test_a_fold_left_unfinished_is_not_pooled(tmp_path):
    _evaluated_fold(tmp_path / "fold0", ["1_left", "1_right"], [0, 2], 0.7)
    with pytest.raises(FileNotFoundError, match="fold1"):
        pool_folds([tmp_path / "fold0", tmp_path / "fold1"], num_classes=5)
