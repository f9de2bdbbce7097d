"""Does an operating-point rule hold on photos it did not see? Measured on val alone, never on test.

The val photos are halved by patient within each source, many times over: each rule chooses its threshold on
one half and the other half gives each source's sensitivity and specificity at it. A rule that holds keeps
each source's sensitivity near the target on the unseen half. This is how ``evaluate.operating_point`` was
chosen for the real-photo presets (docs/results.md).

    python -m research.operating_point runs/real-cpu/results/val_predictions.csv --target 0.87 --repeats 500
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from dr_core.evaluation.metrics import choose_operating_point, sensitivity_specificity

RULES = ("sensitivity", "sensitivity_each_source")


def halves(patients: np.ndarray, sources: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask: half of each source's patients (all photos of a patient on one side)."""
    mask = np.zeros(len(patients), bool)
    for source in np.unique(sources):
        ids = np.unique(patients[sources == source])
        chosen = rng.choice(ids, size=len(ids) // 2, replace=False)
        mask |= (sources == source) & np.isin(patients, chosen)
    return mask


def simulate(table: pd.DataFrame, target: float, referable_grade: int, repeats: int, seed: int,
             rules: Sequence[str] = RULES) -> pd.DataFrame:
    """One row per (repeat, rule, source): sensitivity and specificity on the half the rule did not see."""
    y = table["true_grade"].to_numpy() >= referable_grade
    score = table["referable_score"].to_numpy(np.float64)
    sources = table["source"].astype(str).to_numpy()
    patients = (table["source"].astype(str) + "/" + table["patient"].astype(str)).to_numpy()
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(repeats):
        choose = halves(patients, sources, rng)
        for rule in rules:
            threshold = choose_operating_point(y[choose], score[choose], rule, target, sources[choose])
            for source in np.unique(sources):
                held = ~choose & (sources == source)
                sens, spec = sensitivity_specificity(y[held], score[held], threshold)
                rows.append({"repeat": r, "rule": rule, "source": source, "sensitivity": sens, "specificity": spec})
    return pd.DataFrame(rows)


def summary(rows: pd.DataFrame, target: float) -> str:
    """Markdown: per rule and source, the held-out half's sensitivity (mean, 5th-95th percentile), how often
    it lands within 0.05 of the target, and the specificity it costs."""
    lines = ["| rule | source | sensitivity on the unseen half: mean (5th-95th pct) | within 0.05 of target | "
             "specificity: mean |", "|---|---|---|---|---|"]
    for (rule, source), g in rows.groupby(["rule", "source"], sort=False):
        s = g["sensitivity"].dropna()
        within = float((abs(s - target) <= 0.05).mean())
        lines.append(f"| {rule} | {source} | {s.mean():.3f} ({s.quantile(0.05):.3f}-{s.quantile(0.95):.3f}) | "
                     f"{within:.0%} | {g['specificity'].mean():.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research.operating_point", description=__doc__.splitlines()[0])
    parser.add_argument("val_predictions", type=Path, help="results/val_predictions.csv of the evaluate stage")
    parser.add_argument("--target", type=float, default=0.87, help="evaluate.target_sensitivity")
    parser.add_argument("--referable-grade", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    table = pd.read_csv(args.val_predictions, dtype={"patient": str, "source": str})
    if "source" not in table.columns:
        table["source"] = "all"
    print(summary(simulate(table, args.target, args.referable_grade, args.repeats, args.seed), args.target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
