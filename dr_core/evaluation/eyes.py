"""Both eyes of a patient: blend each photo's prediction with its fellow eye's.

Diabetic retinopathy is a systemic disease, so the two eyes of a patient are usually graded alike;
the best EyePACS Kaggle solutions used the other eye's prediction as evidence. With weight ``w``
each photo's probabilities become ``(1 - w) * p_self + w * mean(p_other photos of the patient)``;
a photo whose patient has no other photo keeps its own. Rows still sum to 1.

``scope`` says what the blend decides: ``referable`` blends only the referable-DR score (the
probability of grade >= the referable grade) and leaves each photo's grade to its own eye;
``all`` uses the blended distribution for the grade too. Applied to validation and test alike,
before the grade cut-points and the referable threshold are chosen on validation.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from dr_core.config import FELLOW_EYE_SCOPES
from dr_core.evaluation.metrics import referable_score


def blend_fellow_eyes(probs: np.ndarray, patients: Sequence, weight: float) -> np.ndarray:
    """``probs`` (N, K) blended with the mean of the same patient's other photos."""
    probs = np.asarray(probs, dtype=np.float64)
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"fellow-eye weight must be in [0, 1), got {weight!r}")
    if len(patients) != len(probs):
        raise ValueError(f"{len(patients)} patient ids for {len(probs)} rows of probabilities")
    if weight == 0.0 or len(probs) == 0:
        return probs
    keys = np.asarray([str(p) for p in patients])
    _, group = np.unique(keys, return_inverse=True)
    sums = np.zeros((group.max() + 1, probs.shape[1]))
    np.add.at(sums, group, probs)
    counts = np.bincount(group)[group][:, None].astype(np.float64)
    others = counts - 1
    fellow = np.divide(sums[group] - probs, others, out=probs.copy(), where=others > 0)
    return (1 - weight) * probs + weight * fellow


def fellow_eye_predictions(probs: np.ndarray, patients: Sequence, weight: float, scope: str,
                           referable_grade: int) -> tuple[np.ndarray, np.ndarray]:
    """Grade probabilities ``(N, K)`` and referable score ``(N,)`` after blending (see the module)."""
    if scope not in FELLOW_EYE_SCOPES:
        raise ValueError(f"fellow-eye scope must be one of {FELLOW_EYE_SCOPES}, got {scope!r}")
    blended = blend_fellow_eyes(probs, patients, weight)
    grades = blended if scope == "all" else np.asarray(probs, dtype=np.float64)
    return grades, referable_score(blended, referable_grade)


def fellow_eye_of(point: dict, source: object) -> tuple[float, str]:
    """``fellow_eye_weight`` and ``fellow_eye_scope`` an operating point was chosen with (0 and
    ``referable`` for points written before they were recorded), checked; ``source`` names it in errors."""
    weight, scope = point.get("fellow_eye_weight", 0.0), point.get("fellow_eye_scope", "referable")
    if not isinstance(weight, (int, float)) or not 0.0 <= weight < 1.0 or scope not in FELLOW_EYE_SCOPES:
        raise ValueError(f"{source}: fellow_eye_weight {weight!r} / fellow_eye_scope {scope!r}: expected a "
                         f"fraction in [0, 1) and one of {list(FELLOW_EYE_SCOPES)}; re-run the evaluate stage")
    return float(weight), str(scope)
