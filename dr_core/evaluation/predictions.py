"""What a model said about a split, and how its grades and referrals are called: the inputs of
:func:`dr_core.evaluation.metrics.compute_metrics` and :func:`dr_core.evaluation.report.write_evaluation`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class Predictions:
    """One evaluated split, row for row (checked by ``validate_predictions`` where it is scored)."""

    ids: Sequence  # photo id per row
    patients: Sequence  # patient id per row: the bootstrap resamples patients
    y_true: np.ndarray  # (N,) true grades
    probs: np.ndarray  # (N, K) grade probabilities
    score: np.ndarray | None = None  # (N,) referable score when not the one probs imply (fellow-eye blending)
    sources: Sequence | None = None  # source (data.sources) per row, for the figures per source


@dataclass(frozen=True)
class Decision:
    """How grades and referrals are called: fixed beforehand on other photos (validation), never
    tuned on the evaluated ones."""

    threshold: float  # referable when the referable score is at least this
    cutpoints: Sequence[float] | None = None  # grade cut-points on the expected grade; None: most probable grade
    operating_point: Mapping[str, Any] | None = None  # choose_threshold's dict when the threshold came from it

    def __post_init__(self) -> None:
        if self.operating_point is not None and self.operating_point["threshold"] != self.threshold:
            raise ValueError(f"threshold {self.threshold} differs from operating_point['threshold'] "
                             f"{self.operating_point['threshold']}")

    @classmethod
    def from_operating_point(cls, point: Mapping[str, Any]) -> Decision:
        """The threshold and grade cut-points (``grade_cutpoints``, if any) of an operating point chosen
        on validation, whose validation figures are then reported beside the evaluated ones."""
        return cls(float(point["threshold"]), point.get("grade_cutpoints"), point)
