"""Regression and ordinal heads, their losses, and QWK cut-points."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dr_core.evaluation.cutpoints import (apply_cutpoints, decide_grades, default_cutpoints, expected_grade,
                               optimize_cutpoints)
from dr_core.models.heads import OrdinalLoss, RegressionLoss, head_for_loss, num_outputs, to_probs
from dr_core.training.losses import build_loss
from dr_core.evaluation.metrics import quadratic_weighted_kappa, referable_score


def test_head_widths():
    assert [num_outputs(head_for_loss(l), 5) for l in ("ce", "focal", "regression", "ordinal")] == [5, 5, 1, 4]
    with pytest.raises(ValueError):
        head_for_loss("hinge")


def test_regression_probs_round_to_the_nearest_grade_and_rank_by_value():
    s = torch.tensor([[-1.0], [0.2], [0.6], [1.49], [2.51], [3.9], [7.0]])
    probs = to_probs("regression", s, 5)
    assert torch.allclose(probs.sum(1), torch.ones(len(s)))
    assert probs.argmax(1).tolist() == [0, 0, 1, 1, 3, 4, 4]
    ref = referable_score(probs.numpy(), 2)
    assert np.all(np.diff(ref) > 0)  # every tail sum increases with the predicted grade


def test_ordinal_probs_are_a_distribution_even_when_cumulative_logits_cross():
    logits = torch.tensor([[5.0, -5.0, 3.0, -9.0], [-4.0, -5.0, -6.0, -7.0], [9.0, 8.0, 7.0, 6.0]])
    probs = to_probs("ordinal", logits, 5)
    assert (probs >= 0).all() and torch.allclose(probs.sum(1), torch.ones(3))
    assert probs.argmax(1).tolist() == [1, 0, 4]
    # referable score = P(grade >= 2) = sigmoid of the (monotone) second cumulative logit
    assert referable_score(probs.numpy(), 2)[2] == pytest.approx(torch.sigmoid(torch.tensor(8.0)).item(), abs=1e-6)


def test_losses_fall_when_outputs_match_the_grade():
    y = torch.tensor([0, 2, 4])
    reg = RegressionLoss()
    assert reg(torch.tensor([[0.0], [2.0], [4.0]]), y) == 0
    assert reg(torch.tensor([[1.0], [1.0], [1.0]]), y) > 0.5
    ordl = OrdinalLoss()
    good = torch.tensor([[-9.0, -9, -9, -9], [9, 9, -9, -9], [9, 9, 9, 9]])
    assert ordl(good, y) < 1e-3 < ordl(-good, y)
    assert isinstance(build_loss("regression", regression_loss="mse"), RegressionLoss)


def test_cutpoints_default_to_rounding_and_argmax_without_them():
    probs = np.eye(5)[[0, 3, 4]]
    assert decide_grades(probs).tolist() == [0, 3, 4]
    assert decide_grades(probs, default_cutpoints(5)).tolist() == [0, 3, 4]
    assert apply_cutpoints(np.array([0.49, 0.5, 3.6]), [0.5, 1.5, 2.5, 3.5]).tolist() == [0, 1, 4]
    with pytest.raises(ValueError, match="cut-points"):
        decide_grades(probs, [0.5, 1.5])


def test_optimized_cutpoints_recover_a_shifted_scale_and_never_lower_qwk():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 400)
    score = 0.5 * y + 0.1 + rng.normal(0, 0.08, len(y))  # a compressed, shifted scale
    base = quadratic_weighted_kappa(y, apply_cutpoints(score, default_cutpoints(5)), 5)
    cuts = optimize_cutpoints(y, score, 5)
    tuned = quadratic_weighted_kappa(y, apply_cutpoints(score, cuts), 5)
    assert tuned >= base and tuned > 0.95
    assert np.all(np.diff(cuts) > 0)
    assert expected_grade(np.eye(5)[[2]])[0] == 2


@pytest.mark.parametrize("loss", ["regression", "ordinal"])
def test_train_and_evaluate_with_a_non_classification_head(fake_cache, tmp_path, loss):
    import json

    from conftest import write_fake_cache  # noqa: F401  (fixture module)
    from dr_core.models.checkpoint import load_checkpoint
    from dr_core.config import params_from_dict
    from dr_core.evaluation.evaluate import evaluate_cached
    from dr_core.training.fit import fit

    params = params_from_dict({
        "model": {"name": "resnet10t", "pretrained": False, "drop_path_rate": 0.0},
        "train": {"image_size": 48, "epochs_stage1": 1, "epochs_stage2": 1, "batch_size": 16,
                  "num_workers": 0, "warmup_epochs": 0.0, "loss": loss},
        "evaluate": {"grade_rule": "qwk", "bootstrap": 20}})
    fit(fake_cache, tmp_path / "models", tmp_path / "live", params)
    model, meta = load_checkpoint(tmp_path / "models" / "best_model.pth")
    assert meta.head == loss and model.get_classifier().out_features == num_outputs(loss, 5)
    metrics = evaluate_cached(tmp_path / "models" / "best_model.pth", fake_cache, tmp_path / "results",
                              params.evaluate)
    point = json.loads((tmp_path / "results" / "operating_point.json").read_text())
    assert len(point["grade_cutpoints"]) == 4 and np.all(np.diff(point["grade_cutpoints"]) > 0)
    assert -1 <= metrics["qwk"] <= 1 and "qwk_argmax" in metrics
    if loss == "regression":
        _check_fellow_eye_scopes(fake_cache, tmp_path, params.evaluate, metrics)


def _check_fellow_eye_scopes(cache, tmp_path, cfg, alone):
    """Both eyes of each patient: ``referable`` moves the referable score only, ``all`` the grades too."""
    import dataclasses

    import pandas as pd

    from dr_core.evaluation.evaluate import evaluate_cached

    for split in ("val", "test"):
        table = pd.read_csv(cache / f"{split}.csv")
        table["patient"] = [f"{split}{i // 2}" for i in range(len(table))]
        table.to_csv(cache / f"{split}.csv", index=False)
    model = tmp_path / "models" / "best_model.pth"
    out = {}
    for scope in ("referable", "all"):
        cfg_scope = dataclasses.replace(cfg, fellow_eye_weight=0.5, fellow_eye_scope=scope)
        out[scope] = evaluate_cached(model, cache, tmp_path / scope, cfg_scope)
    own = pd.read_csv(tmp_path / "results" / "predictions.csv")
    ref = pd.read_csv(tmp_path / "referable" / "predictions.csv")
    both = pd.read_csv(tmp_path / "all" / "predictions.csv")
    # each eye keeps its own grade and probabilities; the referable score is the blended one
    assert out["referable"]["qwk"] == alone["qwk"]
    assert (ref["pred_grade"] == own["pred_grade"]).all() and np.allclose(ref["prob_0"], own["prob_0"])
    assert np.allclose(ref["referable_score"], both["referable_score"])
    assert out["referable"]["referable_auc"] == out["all"]["referable_auc"]
    pair = own["referable_score"].to_numpy().reshape(-1, 2)
    assert np.allclose(ref["referable_score"].to_numpy().reshape(-1, 2), 0.5 * pair + 0.5 * pair[:, ::-1], atol=1e-6)
    assert not np.allclose(both["prob_0"], own["prob_0"])


def test_fellow_eye_blend_mixes_only_within_a_patient():
    from dr_core.evaluation.eyes import blend_fellow_eyes

    probs = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])
    out = blend_fellow_eyes(probs, ["7", "7", "8"], 0.25)
    assert np.allclose(out[0], [0.75, 0, 0.25]) and np.allclose(out[1], [0.25, 0, 0.75])
    assert np.allclose(out[2], probs[2])  # no fellow eye: unchanged
    assert np.allclose(out.sum(1), 1)
    assert np.array_equal(blend_fellow_eyes(probs, ["7", "7", "8"], 0.0), probs)
    with pytest.raises(ValueError, match="weight"):
        blend_fellow_eyes(probs, ["7", "7", "8"], 1.0)


def test_fellow_eye_scope_decides_what_the_blend_changes():
    from dr_core.evaluation.eyes import fellow_eye_predictions

    probs = np.array([[0.9, 0.1, 0, 0, 0], [0, 0, 0.2, 0.8, 0], [0, 0, 1.0, 0, 0]])
    patients = ["7", "7", "8"]
    grades, score = fellow_eye_predictions(probs, patients, 0.5, "referable", referable_grade=2)
    assert np.array_equal(grades, probs)
    assert np.allclose(score, [0.5, 0.5, 1.0])
    grades, score = fellow_eye_predictions(probs, patients, 0.5, "all", referable_grade=2)
    assert np.allclose(grades[0], [0.45, 0.05, 0.1, 0.4, 0]) and np.allclose(score, [0.5, 0.5, 1.0])
    grades, score = fellow_eye_predictions(probs, patients, 0.0, "referable", referable_grade=3)
    assert np.array_equal(grades, probs) and np.allclose(score, [0, 0.8, 0])
    with pytest.raises(ValueError, match="scope"):
        fellow_eye_predictions(probs, patients, 0.5, "grades", referable_grade=2)
