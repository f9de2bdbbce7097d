"""research.learning_curve: pooled cross-validation figures at several training shares, and their fit."""
from __future__ import annotations

import json

import pytest

from research import learning_curve


def _exp(name: str, share: float, auc: float, qwk: float, fold_auc: list[float], **params) -> tuple[dict, dict]:
    """An experiment as `dvc exp show --json` lists it, and the cv/metrics.json of its commit."""
    rev = {"rev": f"sha-{name}", "name": name, "data": {"params": {"params.yaml": {"data": {
        "seed": 42, "split": {"train_fraction": share}, "cv": {"folds": list(range(len(fold_auc)))}, **params}}}}}
    metrics = {"referable_auc": auc, "referable_auc_ci_low": auc - 0.06, "referable_auc_ci_high": auc + 0.05,
               "qwk": qwk, "qwk_ci_low": qwk - 0.1, "qwk_ci_high": qwk + 0.1,
               "folds": {"referable_auc": fold_auc, "qwk": [qwk] * len(fold_auc),
                         "val_referable_auc": [a - 0.01 for a in fold_auc]}}
    return rev, metrics


def _shown(monkeypatch, exps: list[tuple[dict, dict]], extra_revs: list[dict] = ()) -> None:
    shown = [{"rev": "workspace", "experiments": None},
             {"rev": "abc", "experiments": [{"executor": {"state": "success"}, "revs": [rev]} for rev, _ in exps]
              + [{"revs": [rev]} for rev in extra_revs]}]
    files = {rev["rev"]: metrics for rev, metrics in exps}
    monkeypatch.setattr(learning_curve, "exp_show", lambda: json.loads(json.dumps(shown)))
    monkeypatch.setattr(learning_curve, "read_cv_metrics", lambda rev: files[rev])


def test_each_doubling_of_the_photos_is_fitted_and_extrapolated_to_the_target(tmp_path, capsys, monkeypatch):
    _shown(monkeypatch, [_exp("lc-1", 0.25, 0.70, 0.40, [0.68, 0.72]), _exp("lc-3", 1, 0.80, 0.50, [0.80, 0.80]),
                         _exp("lc-2", 0.5, 0.75, 0.45, [0.74, 0.78]), _exp("other-1", 0.5, 0.1, 0.1, [0.1, 0.1])],
           extra_revs=[{"rev": "x", "name": "lc-4", "error": {"msg": "failed"}}])
    png, out = tmp_path / "lc.png", tmp_path / "lc.json"
    assert learning_curve.main(["--train-photos", "400", "--png", str(png), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["share"] for r in result["rows"]] == [0.25, 0.5, 1.0]  # sorted, whatever the order given
    auc = result["fits"]["referable_auc"]
    assert auc["per_doubling"] == pytest.approx(0.05) and auc["share_at_target"] == pytest.approx(2.0)
    assert result["fits"]["qwk"]["share_at_target"] == pytest.approx(2 ** 2)  # 0.60 is two doublings past 0.50
    assert result["rows"][0]["referable_auc_vs_top"] == pytest.approx([-0.10, -0.12, -0.08])  # fold by fold
    assert result["rows"][0]["val_auc"] == pytest.approx(0.69)
    text = capsys.readouterr().out
    assert "| 0.25 (about 100 photos) | 0.690 | 0.700 (0.640-0.750) | -0.100 (-0.120 to -0.080) |" in text
    assert "0.85 at 2.0x the largest share (about 800 photos), extrapolated" in text
    assert auc["last_per_doubling"] == pytest.approx(0.05) and auc["share_at_target_last"] == pytest.approx(2.0)
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_a_flat_curve_never_reaches_the_target():
    assert learning_curve.share_reaching(0.85, 0.8, 0.0) is None
    assert learning_curve.share_reaching(0.85, 0.8, -0.01) is None


def test_bad_points_are_refused_with_the_fix(capsys, monkeypatch):
    _shown(monkeypatch, [_exp("other-1", 0.5, 0.7, 0.4, [0.7, 0.7])])
    with pytest.raises(SystemExit):
        learning_curve.main([])
    assert "no finished experiment named lc-<n>; queue them with `dvc exp run --queue cv/dvc.yaml -n lc" in (
        capsys.readouterr().err)
    _shown(monkeypatch, [_exp("lc-1", 0.5, 0.7, 0.4, [0.7, 0.7]), _exp("lc-2", 0.5, 0.7, 0.4, [0.7, 0.7])])
    with pytest.raises(SystemExit):
        learning_curve.main([])
    assert "each training share may be given once; lc-<n> has [0.5, 0.5]" in capsys.readouterr().err
    _shown(monkeypatch, [_exp("lc-1", 0.5, 0.7, 0.4, [0.7, 0.7]), _exp("lc-2", 1, 0.7, 0.4, [0.7, 0.7], seed=7)])
    with pytest.raises(SystemExit):
        learning_curve.main([])
    assert "experiments lc-1 and lc-2 differ in seed, not only in split.train_fraction" in capsys.readouterr().err
    rev, metrics = _exp("lc-1", 0.5, 0.7, 0.4, [0.7, 0.7])
    del metrics["folds"]  # a run of the main pipeline shows its parent's cv/metrics.json, or none
    _shown(monkeypatch, [(rev, metrics)])
    with pytest.raises(SystemExit):
        learning_curve.main([])
    assert "experiment lc-1: no cv/metrics.json with per-fold figures" in capsys.readouterr().err
