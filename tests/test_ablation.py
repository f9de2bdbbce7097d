"""research.ablation: what it queues, and the table from a saved `dvc exp show --json` (no DVC run needed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from research import ablation

ROOT = Path(__file__).resolve().parents[1]


def _rev(name: str, qwk: float, stamp: str, error: bool = False) -> dict:
    test = {"qwk": qwk, "qwk_argmax": qwk - 0.1, "referable_auc": 0.9, "referable_sensitivity": 0.8,
            "referable_specificity": 0.7}
    rev = {"name": name, "data": {"timestamp": stamp, "metrics": {
        "results/headline.json": {"data": {"test": test}}}}}
    if error:
        rev["error"] = {"msg": "Experiment run failed"}
    return rev


def test_table_averages_seeds_skips_failures_and_keeps_the_newest_rerun():
    rows = [{"rev": "workspace", "experiments": None},
            {"rev": "abc", "experiments": [{"revs": [r]} for r in (
                _rev("abl-focal-s1", 0.5, "2026-01-01T00:00:00"),
                _rev("abl-focal-s2", 0.7, "2026-01-01T00:00:00"),
                _rev("abl-focal-s2", 0.9, "2026-01-02T00:00:00"),  # rerun: newest wins
                _rev("abl-ce-s1", 0.1, "2026-01-01T00:00:00", error=True),
                _rev("unrelated", 0.3, "2026-01-01T00:00:00"))]
             + [{"executor": {"state": "running"}, "revs": [_rev("abl-ordinal-s1", 0.9, "2026-01-03")]}]}]
    results = ablation.collect(json.loads(json.dumps(rows)))
    assert set(results) == {"focal"}
    assert sorted(r["qwk"] for r in results["focal"]) == [0.5, 0.9]
    md = ablation.table(results)
    row = [line for line in md.splitlines() if line.startswith("| focal ")][0]
    assert "| 2 | 0.700 ± 0.283 |" in row and row.endswith("| 0.700 ± 0.000 |")  # no train time: timings are not tracked


def test_folds_queue_one_cross_validation_each_and_tabulate_its_pooled_figures(monkeypatch):
    calls = []
    monkeypatch.setattr(ablation, "sh", lambda cmd, capture=False: calls.append(cmd) or "")
    monkeypatch.chdir(ROOT)
    ablation.queue(ROOT / "presets" / "real-cpu.yaml", [42, 7], ["preset", "focal"], "evaluate", [], folds=3)
    names = [c[c.index("-n") + 1] for c in calls]
    assert names == ["abl-preset-s42-cv3", "abl-focal-s42-cv3", "abl-preset-s7-cv3", "abl-focal-s7-cv3"]
    assert all(c[c.index("-n") + 2] == "cv/dvc.yaml" and "cv.folds=[0, 1, 2]" in c for c in calls)
    assert all(f"seed={n.split('-s')[1].split('-')[0]}" in c for c, n in zip(calls, names))

    pooled = {"qwk": 0.5, "referable_auc": 0.8, "referable_sensitivity": 0.9, "referable_specificity": 0.4,
              "folds": {"referable_auc": [0.7, 0.8, 0.9]}}
    cv_rev = _rev("abl-focal-s42-cv3", 0.1, "2026-01-01T00:00:00")  # results/metrics.json: the parent's, stale
    cv_rev["data"]["metrics"]["cv/metrics.json"] = {"data": pooled}
    rows = [{"rev": "abc", "experiments": [{"revs": [cv_rev]},
                                           {"revs": [_rev("abl-focal-s7", 0.3, "2026-01-01T00:00:00")]}]}]
    results = ablation.collect(json.loads(json.dumps(rows)))
    assert [(r["seed"], r.get("folds"), r["qwk"], r["auc"]) for r in results["focal"]] == [
        (7, None, 0.3, 0.9), (42, 3, 0.5, 0.8)]  # the cross-validation reads its own pooled metrics
    lines = [line for line in ablation.table(results).splitlines() if line.startswith("| focal ")]
    assert lines[0].startswith("| focal | focal loss, gamma 2 | 1 | 0.300 |")
    assert lines[1].startswith("| focal | focal loss, gamma 2 | 1 (3-fold, pooled) | 0.500 | n/a | 0.800 |")


def test_variants_of_removed_options_are_gone():
    settings = {key for overrides, _ in ablation.VARIANTS.values() for key in overrides}
    assert not settings & {"train.rank_weight", "model.head_norm"}
    assert all(v.get("model.global_pool") != "catavgmax" for v, _ in ablation.VARIANTS.values())


def test_a_fold_count_the_split_cannot_take_is_refused_before_anything_is_queued(monkeypatch):
    calls = []
    monkeypatch.setattr(ablation, "sh", lambda cmd, capture=False: calls.append(cmd) or "")
    monkeypatch.chdir(ROOT)
    # val 0.6 leaves photos to train on beside a test share of 0.2, but not beside a test fold of 1/2
    with pytest.raises(ValueError, match=r"cross-validation fold 1 .*split.val \+ 1 / split.folds: got 1.1"):
        ablation.queue(ROOT / "presets" / "real-cpu.yaml", [42], ["preset"], "evaluate", ["split.val=0.6"], folds=2)
    assert calls == []
