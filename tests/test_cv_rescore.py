"""research.cv_rescore: a cross-validation's fold models re-scored at other input sizes, and linear
probes on frozen features over the same folds."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from dr_core.config import params_from_dict
from research import cv_rescore


def test_ranks_are_taken_within_each_fold():
    score = np.array([10.0, 20.0, 30.0, 0.1, 0.3, 0.2])
    fold = np.array([0, 0, 0, 1, 1, 1])
    assert cv_rescore._rank_within(score, fold) == pytest.approx([1 / 3, 2 / 3, 1, 1 / 3, 1, 2 / 3])


def test_frozen_features_average_the_photo_and_its_mirror_and_pool_the_last_three_stages():
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=0).eval()
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    feats = cv_rescore.frozen_features(images, model, batch_size=2)
    mean, std = (torch.tensor(model.pretrained_cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).sub(mean).div(std)
    with torch.no_grad():
        own = model.forward_head(model.forward_features(x), pre_logits=True)
        mirror = model.forward_head(model.forward_features(torch.flip(x, dims=(3,))), pre_logits=True)
    assert feats["final avg"] == pytest.approx(((own + mirror) / 2).numpy(), abs=1e-4)
    assert not np.allclose(own.numpy(), mirror.numpy(), atol=1e-3)  # the mirror image is a different input
    # resnet10t: stages of 128, 256 and 512 channels and 512 final features, each pooled three ways
    assert feats["stages"].shape == (3, 3 * (128 + 256 + 512 + 512))


def test_a_folder_without_finished_folds_says_which_command_makes_them(tmp_path):
    (tmp_path / "fold0").mkdir()
    params = params_from_dict({"cv": {"folds": [0, 1, 2]}}, validate=False)
    with pytest.raises(FileNotFoundError, match=r"no finished folds of cv.folds \[0, 1, 2\] .*`dvc repro cv/dvc.yaml`"):
        cv_rescore.fold_runs(tmp_path, params)


def test_sizes_above_the_cache_size_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cv_rescore.main(["resolution", "--cv-dir", str(tmp_path), "--cache-size", "64", "--sizes", "48", "96"])
    assert "--sizes [96] exceed --cache-size 64" in capsys.readouterr().err


def _fold_figures(project, k: int) -> dict:
    """What the evaluate stage of cv/dvc.yaml measured on fold ``k``."""
    return json.loads((project / "cv" / "results" / f"fold{k}" / "metrics.json").read_text())["test"]


@pytest.mark.slow
def test_rescoring_at_the_training_size_repeats_the_evaluate_stage(cv_project, tmp_path, monkeypatch):
    monkeypatch.chdir(cv_project)  # the cv/ folder and params.yaml of a two-fold cross-validation (conftest)
    rc = cv_rescore.main(["resolution", "--cache-size", "64", "--sizes", "48", "64",
                          "--json", str(tmp_path / "r.json")])
    rows = json.loads((tmp_path / "r.json").read_text())
    assert rc == 0 and [(r["fold"], r["size"]) for r in rows] == [(0, 48), (0, 64), (1, 48), (1, 64),
                                                                    (None, 48), (None, 64)]
    for k in (0, 1):  # the preset's cache size and input size: the evaluate stage's figures exactly
        (mine,) = [r for r in rows if r["fold"] == k and r["size"] == 48]
        figures = _fold_figures(cv_project, k)
        assert mine["auc"] == pytest.approx(figures["referable_auc"], abs=1e-6)
        assert mine["val_auc"] == pytest.approx(figures["val_referable_auc"], abs=1e-6)
        assert mine["qwk"] == pytest.approx(figures["qwk"], abs=1e-6)
    pooled = json.loads((cv_project / "cv" / "metrics.json").read_text())
    assert pooled["referable_auc"] == pytest.approx(rows[4]["auc"], abs=1e-6)  # pooled as dr_core.evaluation.crossval


@pytest.mark.slow
def test_probes_are_fitted_on_each_fold_without_its_test_photos(cv_project, tmp_path, monkeypatch):
    monkeypatch.chdir(cv_project)
    seen = []
    fit = cv_rescore._fit_score

    def spy(kind, x_tr, y_tr, groups, x_te, ref):
        seen.append((len(x_tr), len(x_te), set(groups)))
        return fit(kind, x_tr, y_tr, groups, x_te, ref)

    monkeypatch.setattr(cv_rescore, "_fit_score", spy)
    rc = cv_rescore.main(["probe", "--size", "48", "--json", str(tmp_path / "p.json")])
    rows = json.loads((tmp_path / "p.json").read_text())
    assert rc == 0 and [(r["features"], r["model"]) for r in rows] == [
        ("fine-tuned fold models", "-"), ("final avg", "ridge"), ("final avg", "logistic"),
        ("stages", "ridge"), ("stages", "logistic")]
    assert all(0.0 <= r["auc"] <= 1.0 for r in rows)
    # QWK: the fine-tuned folds' own grades pooled as dr_core.evaluation.crossval pools them; a ridge's grades at
    # cut-points tuned on its training photos; none for the referable-only logistic model
    pooled = json.loads((cv_project / "cv" / "metrics.json").read_text())
    assert rows[0]["qwk"] == pytest.approx(pooled["qwk"], abs=1e-6)
    assert [r["qwk"] is None for r in rows] == [False, False, True, False, True]
    assert all(-1.0 <= r["qwk"] <= 1.0 for r in rows if r["qwk"] is not None)
    tested = [pd.read_csv(cv_project / "cv" / "results" / f"fold{k}" / "predictions.csv") for k in (0, 1)]
    assert [(n_tr, n_te) for n_tr, n_te, _ in seen[::4]] == [(pooled["n_images"] - len(t), len(t)) for t in tested]
    for (_, _, groups), t in zip(seen[::4], tested):
        assert not groups & set(t["patient"].astype(str))  # no test patient among the training photos
