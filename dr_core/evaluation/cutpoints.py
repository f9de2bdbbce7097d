"""Grade decisions from a grade distribution: argmax, or cut-points on the expected grade.

The expected grade ``sum_k k * P(k)`` is a continuous score for every head (for the regression
head it increases with the predicted value). Cut-points ``c_1 < ... < c_{K-1}`` turn it into a
grade: ``grade = #{j : score >= c_j}``. :func:`optimize_cutpoints` chooses them on validation
to maximise quadratic weighted kappa, the APTOS 2019 practice; the evaluate stage then applies
them unchanged to the test split.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from dr_core.evaluation.metrics import quadratic_weighted_kappa


def expected_grade(probs: np.ndarray) -> np.ndarray:
    """``sum_k k * P(k)`` per row of ``probs`` ``(N, K)``."""
    probs = np.asarray(probs, dtype=np.float64)
    return probs @ np.arange(probs.shape[1], dtype=np.float64)


def default_cutpoints(num_classes: int) -> np.ndarray:
    """Rounding: ``0.5, 1.5, ..., K - 1.5``."""
    return np.arange(num_classes - 1, dtype=np.float64) + 0.5


def apply_cutpoints(score: np.ndarray, cutpoints: Sequence[float]) -> np.ndarray:
    """Grades ``(N,)``: how many cut-points each score reaches."""
    cuts = np.asarray(cutpoints, dtype=np.float64)
    return (np.asarray(score, dtype=np.float64)[:, None] >= cuts[None, :]).sum(axis=1).astype(np.int64)


def decide_grades(probs: np.ndarray, cutpoints: Sequence[float] | None = None) -> np.ndarray:
    """The predicted grade: argmax of ``probs`` when ``cutpoints`` is None, else cut-points on
    the expected grade."""
    probs = np.asarray(probs)
    if cutpoints is None:
        return probs.argmax(axis=1).astype(np.int64) if len(probs) else np.zeros(0, np.int64)
    if len(cutpoints) != probs.shape[1] - 1:
        raise ValueError(f"{len(cutpoints)} cut-points for {probs.shape[1]} grades; need "
                         f"{probs.shape[1] - 1}")
    return apply_cutpoints(expected_grade(probs), cutpoints)


def optimize_cutpoints(y_true: np.ndarray, score: np.ndarray, num_classes: int, passes: int = 4
                       ) -> np.ndarray:
    """Cut-points maximising QWK of ``apply_cutpoints(score)`` against ``y_true``.

    Coordinate ascent from rounding (0.5, 1.5, ...): each cut-point in turn moves to the best
    candidate between its neighbours (midpoints between consecutive distinct scores, plus its
    current value, so a pass never lowers QWK), for ``passes`` sweeps or until nothing moves. Ties
    keep the candidate closest to the rounding value, which keeps cut-points sensible where
    validation has few photos of a grade. Deterministic.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    if len(y_true) != len(score) or len(score) == 0:
        raise ValueError(f"need as many scores as grades (got {len(score)} and {len(y_true)}), at least one")
    cuts = default_cutpoints(num_classes)
    values = np.unique(score)
    mids = (values[1:] + values[:-1]) / 2 if len(values) > 1 else values

    def kappa(c: np.ndarray) -> float:
        q = quadratic_weighted_kappa(y_true, apply_cutpoints(score, c), num_classes)
        return -np.inf if np.isnan(q) else q

    best = kappa(cuts)
    for _ in range(passes):
        moved = False
        for j in range(num_classes - 1):
            low = cuts[j - 1] if j > 0 else -np.inf
            high = cuts[j + 1] if j < num_classes - 2 else np.inf
            candidates = mids[(mids > low) & (mids < high)]
            choice, choice_q = cuts[j], best
            for c in candidates:
                trial = cuts.copy()
                trial[j] = c
                q = kappa(trial)
                if q > choice_q + 1e-12 or (abs(q - choice_q) <= 1e-12 and
                                            abs(c - (j + 0.5)) < abs(choice - (j + 0.5))):
                    choice, choice_q = c, q
            if choice != cuts[j]:
                cuts[j], best, moved = choice, choice_q, True
        if not moved:
            break
    return cuts
