"""bench/ablation.py: what it queues, and the table from a saved `dvc exp show --json` (no DVC run needed)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ablation", ROOT / "bench" / "ablation.py")
ablation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablation)


def _rev(name: str, qwk: float, stamp: str, error: bool = False) -> dict:
    test = {"qwk": qwk, "qwk_argmax": qwk - 0.1, "referable_auc": 0.9, "referable_sensitivity": 0.8,
            "referable_specificity": 0.7}
    rev = {"name": name, "data": {"timestamp": stamp, "metrics": {
        "results/metrics.json": {"data": {"test": test}},
        "dvclive/train/metrics.json": {"data": {"train_seconds": 100.0}}}}}
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
    assert "| 2 | 0.700 ± 0.283 |" in row and row.endswith("| 100 |")


def test_folds_are_queued_as_one_experiment_each_and_tabulated_per_fold(monkeypatch):
    calls = []
    monkeypatch.setattr(ablation, "sh", lambda cmd, capture=False: calls.append(cmd) or "")
    monkeypatch.chdir(ROOT)
    ablation.queue(ROOT / "presets" / "real-cpu.yaml", [42], ["preset", "focal"], "evaluate", [], folds=3)
    names = [c[c.index("-n") + 1] for c in calls]
    assert names == ["abl-preset-s42-f0", "abl-focal-s42-f0", "abl-preset-s42-f1", "abl-focal-s42-f1",
                     "abl-preset-s42-f2", "abl-focal-s42-f2"]
    assert all("split.folds=3" in c and f"split.fold={n[-1]}" in c and "seed=42" in c for c, n in zip(calls, names))

    rows = [{"rev": "abc", "experiments": [{"revs": [_rev(f"abl-focal-s42-f{k}", q, "2026-01-01T00:00:00")]}
                                           for k, q in ((0, 0.5), (1, 0.6), (2, 0.7))]
             + [{"revs": [_rev("abl-focal-s7", 0.1, "2026-01-01T00:00:00")]}]}]
    results = ablation.collect(json.loads(json.dumps(rows)))
    assert [(r["seed"], r.get("fold"), r["qwk"]) for r in results["focal"]] == [
        (7, None, 0.1), (42, 0, 0.5), (42, 1, 0.6), (42, 2, 0.7)]  # folds of a seed are runs of their own


def test_a_fold_count_the_split_cannot_take_is_refused_before_anything_is_queued(monkeypatch):
    calls = []
    monkeypatch.setattr(ablation, "sh", lambda cmd, capture=False: calls.append(cmd) or "")
    monkeypatch.chdir(ROOT)
    with pytest.raises(ValueError, match="split.val"):  # val 0.9 and a test fold of 1/2: no photos left to train on
        ablation.queue(ROOT / "presets" / "real-cpu.yaml", [42], ["preset"], "evaluate", ["split.val=0.9"], folds=2)
    assert calls == []
