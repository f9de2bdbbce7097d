"""Calibration of softmax probabilities: reliability bins, ECE, Brier score, log loss.

Top-label calibration asks: among photos graded with confidence ``c`` (the largest class
probability), is the predicted grade right a fraction ``c`` of the time?
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_BINS = 15


@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width confidence bins; empty bins have ``count`` 0 and ``NaN`` means."""

    lower: np.ndarray  # (B,) bin edges, bin b is (lower, upper], the first also holds 0
    upper: np.ndarray  # (B,)
    confidence: np.ndarray  # (B,) mean top-label confidence in the bin
    accuracy: np.ndarray  # (B,) fraction of correct top-label predictions in the bin
    count: np.ndarray  # (B,) int

    @property
    def nonempty(self) -> np.ndarray:
        return self.count > 0


def reliability_bins(probs: np.ndarray, y_true: np.ndarray, n_bins: int = DEFAULT_BINS) -> ReliabilityBins:
    """Bin the top-label confidence of ``probs (N, K)`` and measure accuracy in each bin."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(y_true)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right-closed bins: a confidence of exactly 0.6 falls in (0.5333, 0.6]
    index = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=n_bins) / count
        mean_acc = np.bincount(index, weights=correct, minlength=n_bins) / count
    return ReliabilityBins(lower=edges[:-1], upper=edges[1:], confidence=mean_conf,
                           accuracy=mean_acc, count=count)


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """Top-label ECE: the count-weighted mean of ``|accuracy - confidence|`` over the bins."""
    bins = reliability_bins(probs, y_true, n_bins)
    total = bins.count.sum()
    if total == 0:
        return math.nan
    keep = bins.nonempty
    gap = np.abs(bins.accuracy[keep] - bins.confidence[keep])
    return float((bins.count[keep] * gap).sum() / total)


def brier_score(probs: np.ndarray, y_true: np.ndarray) -> float:
    """Multi-class Brier score: mean over photos of the squared distance to the one-hot truth."""
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(probs.shape[1])[np.asarray(y_true)]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def log_loss(probs: np.ndarray, y_true: np.ndarray, eps: float = 1e-12) -> float:
    """Mean negative log-probability of the true grade (probabilities clipped at ``eps``)."""
    probs = np.asarray(probs, dtype=np.float64)
    picked = probs[np.arange(len(probs)), np.asarray(y_true)]
    return float(-np.log(np.clip(picked, eps, 1.0)).mean())
