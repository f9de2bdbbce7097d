"""Patient-level bootstrap confidence intervals.

Two photos of one patient (left and right eye, or repeat shots) are not independent, so
the resampling unit is the patient: each resample draws patients with replacement and
keeps every photo of each drawn patient. Resampling photos instead makes intervals too
narrow whenever patients contribute several photos.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Interval:
    """A percentile interval and how many resamples it rests on."""

    low: float
    high: float
    n_valid: int  # resamples where the metric was defined
    n_skipped: int  # resamples where it was NaN (e.g. no referable case drawn)


class GroupSampler:
    """Draws index sets made of whole groups (patients), with replacement."""

    def __init__(self, groups: Sequence) -> None:
        codes = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)[1]
        self.order = np.argsort(codes, kind="stable")  # photo indices sorted by group
        self.lengths = np.bincount(codes)  # photos per group
        self.starts = np.cumsum(self.lengths) - self.lengths  # first position of each group in `order`

    @property
    def n_groups(self) -> int:
        return len(self.lengths)

    def indices(self, chosen: np.ndarray) -> np.ndarray:
        """Photo indices of the groups ``chosen`` (repeats included), in draw order."""
        sizes = self.lengths[chosen]
        first = np.repeat(self.starts[chosen], sizes)
        within = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        return self.order[first + within]

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One bootstrap resample: ``n_groups`` groups drawn with replacement."""
        return self.indices(rng.integers(0, self.n_groups, size=self.n_groups))


def percentile_interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    """The ``alpha/2`` and ``1 - alpha/2`` percentiles of the finite ``values``."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan, math.nan
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def bootstrap_ci(fn: Callable[[np.ndarray], Mapping[str, float]], groups: Sequence, n: int,
                 seed: int | np.random.Generator, alpha: float = 0.05) -> dict[str, Interval]:
    """Percentile intervals of several metrics, resampling patients.

    Args:
        fn: maps an index array (photos of one resample, with repeats) to named metric
            values; a value may be ``NaN`` where the metric is undefined on that resample.
        groups: patient id of every photo, ``(N,)``.
        n: number of resamples; 0 gives ``NaN`` intervals.
        seed: an integer seed or a ``np.random.Generator``.
        alpha: 0.05 gives 95% intervals.

    Returns:
        ``{metric name: Interval}``; resamples where a metric is ``NaN`` are skipped for that
        metric and counted in ``n_skipped``.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if n < 0:
        raise ValueError(f"number of bootstrap resamples must be >= 0, got {n}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    sampler = GroupSampler(groups)
    names = list(fn(np.arange(len(sampler.order))))  # the metric names, from the full sample
    draws = np.full((n, len(names)), np.nan)
    for i in tqdm(range(n), desc="bootstrap", unit="resample", disable=None, leave=False):
        values = fn(sampler.sample(rng))
        draws[i] = [values[name] for name in names]
    result = {}
    for j, name in enumerate(names):
        valid = np.isfinite(draws[:, j])
        low, high = percentile_interval(draws[valid, j], alpha)
        result[name] = Interval(low, high, int(valid.sum()), int(n - valid.sum()))
        if n and valid.sum() < n:
            log.info("bootstrap: %s undefined in %d of %d resamples (skipped)", name, n - valid.sum(), n)
    return result
