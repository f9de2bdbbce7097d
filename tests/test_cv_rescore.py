"""bench/cv_rescore.py: a cross-validation's fold models re-scored at other input sizes, and linear
probes on frozen features over the same folds."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from conftest import REPO

spec = importlib.util.spec_from_file_location("cv_rescore", REPO / "bench" / "cv_rescore.py")
cv_rescore = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cv_rescore)


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
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match="bench/sweep.py --variants preset --seeds 7 --folds 5"):
        cv_rescore.fold_runs(tmp_path, "preset", 7)


def test_sizes_above_the_cache_size_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cv_rescore.main(["resolution", "--cv-dir", str(tmp_path), "--cache-size", "64", "--sizes", "48", "96"])
    assert "--sizes [96] exceed --cache-size 64" in capsys.readouterr().err


@pytest.fixture(scope="module")
def two_folds(tmp_path_factory):
    """A two-fold cross-validation of the tiny preset of tests/test_sweep.py (100 generated photos)."""
    from test_sweep import _generated_preset, sweep

    tmp = tmp_path_factory.mktemp("cv")
    out = tmp / "cv"
    rc = sweep.main(["--preset", str(_generated_preset(tmp)), "--variants", "preset", "--seeds", "1", "--folds", "2",
                     "-j", "2", "--out-dir", str(out), "--json", str(tmp / "rows.json")])
    rows = json.loads((tmp / "rows.json").read_text())
    assert rc == 0, rows
    return out, rows


@pytest.mark.slow
def test_rescoring_at_the_training_size_repeats_the_evaluate_stage(two_folds, tmp_path):
    out, sweep_rows = two_folds
    rc = cv_rescore.main(["resolution", "--cv-dir", str(out), "--seed", "1", "--cache-size", "64",
                          "--sizes", "48", "64", "--json", str(tmp_path / "r.json")])
    rows = json.loads((tmp_path / "r.json").read_text())
    assert rc == 0 and [(r["fold"], r["size"]) for r in rows] == [(0, 48), (0, 64), (1, 48), (1, 64),
                                                                    (None, 48), (None, 64)]
    for k in (0, 1):  # the preset's cache size and input size: the evaluate stage's figures exactly
        (mine,) = [r for r in rows if r["fold"] == k and r["size"] == 48]
        assert mine["auc"] == pytest.approx(sweep_rows[k]["auc"], abs=1e-6)
        assert mine["val_auc"] == pytest.approx(sweep_rows[k]["val_auc"], abs=1e-6)
        assert mine["qwk"] == pytest.approx(sweep_rows[k]["qwk"], abs=1e-6)
    assert sweep_rows[2]["referable_auc"] == pytest.approx(rows[4]["auc"], abs=1e-6)  # pooled as dr_core.evaluation.crossval


@pytest.mark.slow
def test_probes_are_fitted_on_each_fold_without_its_test_photos(two_folds, tmp_path, monkeypatch):
    out, sweep_rows = two_folds
    seen = []
    fit = cv_rescore._fit_score

    def spy(kind, x_tr, y_tr, groups, x_te, ref):
        seen.append((len(x_tr), len(x_te), set(groups)))
        return fit(kind, x_tr, y_tr, groups, x_te, ref)

    monkeypatch.setattr(cv_rescore, "_fit_score", spy)
    rc = cv_rescore.main(["probe", "--cv-dir", str(out), "--seed", "1", "--size", "48",
                          "--json", str(tmp_path / "p.json")])
    rows = json.loads((tmp_path / "p.json").read_text())
    assert rc == 0 and [(r["features"], r["model"]) for r in rows] == [
        ("fine-tuned fold models", "-"), ("final avg", "ridge"), ("final avg", "logistic"),
        ("stages", "ridge"), ("stages", "logistic")]
    assert all(0.0 <= r["auc"] <= 1.0 for r in rows)
    # QWK: the fine-tuned folds' own grades pooled as dr_core.evaluation.crossval pools them; a ridge's grades at
    # cut-points tuned on its training photos; none for the referable-only logistic model
    assert rows[0]["qwk"] == pytest.approx(sweep_rows[2]["qwk"], abs=1e-6)
    assert [r["qwk"] is None for r in rows] == [False, False, True, False, True]
    assert all(-1.0 <= r["qwk"] <= 1.0 for r in rows if r["qwk"] is not None)
    tested = [pd.read_csv(out / "runs" / f"preset-s1-f{k}" / "results" / "predictions.csv") for k in (0, 1)]
    assert [(n_tr, n_te) for n_tr, n_te, _ in seen[::4]] == [(100 - len(t), len(t)) for t in tested]
    for (_, _, groups), t in zip(seen[::4], tested):
        assert not groups & set(t["patient"].astype(str))  # no test patient among the training photos
