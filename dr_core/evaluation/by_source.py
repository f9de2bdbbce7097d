"""Figures per source: the headline metrics of each source's photographs, with patient-bootstrap intervals
drawn within the source, at the one operating point chosen on the pooled validation split (a deployed
screener applies one threshold and one set of grade cut-points to every clinic's photographs).

``metrics.json`` holds them beside the overall figures, one block per source (``test.odir.qwk``), also when
there is a single source (its block then equals the overall figures): the keys stay the same when a source
is added, so ``dvc metrics diff`` and ``dvc exp show`` compare a source's figures across experiments.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from dr_core.config import METRIC_KEYS, EvaluateConfig
from dr_core.evaluation.metrics import compute_metrics
from dr_core.evaluation.predictions import Decision, Predictions

HEADLINE = ("qwk", "referable_auc", "referable_sensitivity", "referable_specificity")


def headline(preds: Predictions, decision: Decision, cfg: EvaluateConfig, seed: int = 0) -> dict[str, Any]:
    """Photos, patients, and QWK, referable AUC, sensitivity and specificity with their 95% intervals."""
    metrics = compute_metrics(preds, decision, cfg, seed)
    out = {"n_images": metrics["n_images"], "n_patients": metrics["n_patients"]}
    for key in HEADLINE:
        out.update({key: metrics[key], f"{key}_ci_low": metrics[f"{key}_ci_low"],
                    f"{key}_ci_high": metrics[f"{key}_ci_high"]})
    return out


def subset(preds: Predictions, mask: np.ndarray) -> Predictions:
    """The rows of ``preds`` where ``mask`` is true."""
    idx = np.flatnonzero(mask)
    pick = lambda values: None if values is None else [values[i] for i in idx]  # noqa: E731
    return Predictions(pick(preds.ids), pick(preds.patients), np.asarray(preds.y_true)[idx],
                       np.asarray(preds.probs)[idx], None if preds.score is None else np.asarray(preds.score)[idx],
                       pick(preds.sources))


def by_source(preds: Predictions, decision: Decision, cfg: EvaluateConfig, seed: int = 0) -> dict[str, dict]:
    """:func:`headline` of each source's photos (in order of first appearance); empty without sources."""
    if preds.sources is None:
        return {}
    sources = pd.Series(list(preds.sources), dtype=object)
    out = {}
    for name in sources.unique():
        if name in METRIC_KEYS:  # params.yaml refuses such names; an old cache could still hold one
            raise ValueError(f"source {name!r} is named like a metric of metrics.json; rename the source")
        out[str(name)] = headline(subset(preds, (sources == name).to_numpy()), decision, cfg, seed)
    return out
