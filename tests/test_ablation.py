"""bench/ablation.py: the table from a saved `dvc exp show --json` (no DVC run needed)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

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
