"""cv/dvc.yaml end to end: two folds of the tiny demo through real `dvc` commands, pooled by the pool
stage; a learning curve as a queued grid of cross-validations."""
from __future__ import annotations

import json
import sys

import pandas as pd
import pytest

from test_pipeline_e2e import _run, run_queue

pytestmark = pytest.mark.slow


def test_each_photo_is_tested_once_and_the_folds_are_pooled(cv_project):
    split = [cv_project / "cv" / f"fold{k}" / "split" for k in (0, 1)]
    tested = [set(pd.read_csv(s / "test.csv")["id"]) for s in split]
    photos = set(pd.concat([pd.read_csv(split[0] / f"{name}.csv") for name in ("train", "val", "test")])["id"])
    assert not tested[0] & tested[1] and tested[0] | tested[1] == photos  # the test folds partition the photos
    for k, s in enumerate(split):
        summary = json.loads((s / "summary.json").read_text())
        assert (summary["folds"], summary["test_fold"]) == (2, k)
        predicted = pd.read_csv(cv_project / "cv" / "results" / f"fold{k}" / "predictions.csv")
        assert set(predicted["id"]) == tested[k]
    pooled = json.loads((cv_project / "cv" / "metrics.json").read_text())
    assert pooled["n_images"] == len(photos) and pooled["folds"]["n_images"] == [len(t) for t in tested]
    for key in ("qwk", "referable_auc", "referable_sensitivity", "referable_specificity"):
        assert pooled[f"{key}_ci_low"] <= pooled[key] <= pooled[f"{key}_ci_high"]
    assert "| 1 | " in (cv_project / "cv" / "cv.md").read_text()
    shown = _run(["dvc", "metrics", "show", "--json"], cv_project, stdout_only=True)
    assert "cv/metrics.json" in shown and "referable_auc" in shown
    assert "up to date" in _run(["dvc", "status", "cv/dvc.yaml"], cv_project)


def test_a_learning_curve_is_a_queued_grid_of_cross_validations(cv_project, tmp_path):
    _run(["dvc", "exp", "run", "--queue", "cv/dvc.yaml", "-n", "lc", "-S", "split.train_fraction=0.5,1.0"],
         cv_project)
    run_queue(cv_project, jobs=1, timeout_s=900)
    out = _run([sys.executable, "-m", "research.learning_curve", "--json", str(tmp_path / "lc.json")], cv_project)
    result = json.loads((tmp_path / "lc.json").read_text())
    assert [r["share"] for r in result["rows"]] == [0.5, 1.0], out
    # share 1 is the committed cross-validation again: DVC skipped every stage and kept its figures
    pooled = json.loads((cv_project / "cv" / "metrics.json").read_text())
    assert result["rows"][1]["referable_auc"] == pooled["referable_auc"]
    assert result["rows"][0]["referable_auc_vs_top"] is not None  # paired fold by fold


def test_the_root_pipeline_leaves_the_cross_validation_alone(cv_project):
    """Last: it runs the main pipeline in the shared copy (`dvc repro --dry` cannot, before its outputs exist)."""
    out = _run(["dvc", "repro"], cv_project)
    assert "Running stage 'evaluate'" in out and "cv/dvc.yaml" not in out, out[-3000:]
    assert "up to date" in _run(["dvc", "status", "cv/dvc.yaml"], cv_project)
