"""Grading metrics: agreement (QWK), per-class scores, one-vs-rest AUC, referable DR.

All functions are pure and take integer grades ``0..K-1`` and softmax probabilities
``(N, K)``. Where a metric is undefined on the data given (a class absent from
``y_true``, no referable case, ...) the result is ``NaN`` rather than an exception, so
that a small test split still produces a complete report.

Referable DR is ``grade >= referable_grade`` (2: moderate or worse, the usual screening
definition); its score is the summed probability of the referable grades and a case is
called referable when ``score >= threshold``.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
from sklearn import metrics as skm

from dr_core.evaluation.bootstrap import bootstrap_ci
from dr_core.evaluation.calibration import DEFAULT_BINS, brier_score, expected_calibration_error, log_loss
from dr_core.config import GRADE_NAMES, EvaluateConfig
from dr_core.evaluation.predictions import Decision, Predictions

OPERATING_POINTS = ("sensitivity", "sensitivity_each_source", "youden")


def grade_names(num_classes: int) -> list[str]:
    """Clinical names for the 5-grade scale, ``"grade k"`` for any other number of classes."""
    if num_classes == len(GRADE_NAMES):
        return list(GRADE_NAMES)
    return [f"grade {k}" for k in range(num_classes)]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``(K, K)``: row = true grade, column = predicted grade, over the full scale."""
    return skm.confusion_matrix(np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64),
                                labels=np.arange(num_classes))


def quadratic_weighted_kappa(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Cohen's kappa with quadratic weights over the full scale ``0..num_classes-1`` (scikit-learn).

    ``NaN`` when chance disagreement is zero, i.e. truth and prediction are the same single grade
    throughout, where scikit-learn would divide by zero.
    """
    if len(y_true) == 0:
        return math.nan
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = skm.cohen_kappa_score(y_true, y_pred, labels=np.arange(num_classes), weights="quadratic")
    return float(value) if np.isfinite(value) else math.nan


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of exact grade matches."""
    return float(skm.accuracy_score(y_true, y_pred)) if len(y_true) else math.nan


def per_class_scores(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support for every grade, each an array of length K (scikit-learn).

    Precision is ``NaN`` for a grade never predicted, recall for a grade absent from
    ``y_true``; F1 is ``NaN`` when both are, and 0 when there is no true positive.
    """
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(num_classes), zero_division=np.nan)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Mean recall over the grades present in ``y_true`` (scikit-learn's balanced accuracy)."""
    return _nanmean(per_class_scores(y_true, y_pred, num_classes)["recall"])


def f1_macro(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean F1 over grades that occur in ``y_true`` or ``y_pred`` (as scikit-learn's macro F1)."""
    return _nanmean(per_class_scores(y_true, y_pred, num_classes)["f1"])


def binary_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn; ties count one half); ``NaN`` with one class."""
    y = np.asarray(y, dtype=bool)
    if y.all() or not y.any():
        return math.nan
    return float(skm.roc_auc_score(y, np.asarray(score, dtype=np.float64)))


def auc_one_vs_rest(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One-vs-rest AUC for every grade, ``(K,)``; ``NaN`` for a grade absent from ``y_true``."""
    y_true = np.asarray(y_true)
    return np.array([binary_auc(y_true == k, probs[:, k]) for k in range(probs.shape[1])])


def referable_labels(y_true: np.ndarray, referable_grade: int) -> np.ndarray:
    """True where the grade is ``>= referable_grade``."""
    return np.asarray(y_true) >= referable_grade


def referable_score(probs: np.ndarray, referable_grade: int) -> np.ndarray:
    """Probability of referable DR: the sum of the probabilities of grades ``>= referable_grade``."""
    return np.asarray(probs, dtype=np.float64)[:, referable_grade:].sum(axis=1)


def resolve_referable_score(probs: np.ndarray, referable_grade: int, score: np.ndarray | None) -> np.ndarray:
    """``score`` when given (checked against ``probs``' rows), else the one ``probs`` imply."""
    if score is None:
        return referable_score(probs, referable_grade)
    score = np.asarray(score, dtype=np.float64)
    if score.shape != (len(probs),):
        raise ValueError(f"referable score has shape {score.shape}, expected ({len(probs)},)")
    return score


def sensitivity_specificity(y_ref: np.ndarray, score: np.ndarray, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity of ``score >= threshold``; ``NaN`` where a class is absent."""
    y_ref = np.asarray(y_ref, dtype=bool)
    called = np.asarray(score) >= threshold
    sens = float(called[y_ref].mean()) if y_ref.any() else math.nan
    spec = float((~called[~y_ref]).mean()) if (~y_ref).any() else math.nan
    return sens, spec


def _sensitivity_threshold(positive_scores: np.ndarray, target: float) -> float:
    """The highest threshold calling at least ``target`` of these referable cases referable."""
    positives = np.sort(positive_scores)[::-1]
    # smallest number of positives to call referable; the epsilon guards 0.87 * 100 = 87.00000000000001
    needed = max(1, math.ceil(target * len(positives) - 1e-9))
    return float(positives[needed - 1])


def choose_operating_point(y_ref_val: np.ndarray, score_val: np.ndarray, mode: str = "sensitivity",
                           target_sensitivity: float = 0.87, groups: Sequence | None = None) -> float:
    """Threshold on the referable score, chosen on the validation split only.

    Args:
        y_ref_val: referable truth on validation.
        score_val: referable score on validation.
        mode: ``"sensitivity"``: the highest threshold whose validation sensitivity is at
            least ``target_sensitivity`` (so the best specificity under that constraint);
            ``"sensitivity_each_source"``: the highest threshold whose validation sensitivity is at
            least ``target_sensitivity`` within every group of ``groups`` (the sources) that has a
            referable case: one threshold, met by each population rather than by their mixture;
            ``"youden"``: the threshold maximising sensitivity + specificity - 1.
        target_sensitivity: used by the two sensitivity modes.
        groups: each photo's group (source), for ``"sensitivity_each_source"``; None: one group.

    Returns:
        A threshold to apply unchanged to the test split (``score >= threshold`` is referable).
    """
    y = np.asarray(y_ref_val, dtype=bool)
    score = np.asarray(score_val, dtype=np.float64)
    if mode not in OPERATING_POINTS:
        raise ValueError(f"operating point mode must be one of {list(OPERATING_POINTS)}, got {mode!r}")
    if len(y) != len(score):
        raise ValueError(f"y_ref_val has {len(y)} rows but score_val has {len(score)}")
    if not y.any():
        raise ValueError("validation split has no referable case, so no operating point can be chosen; "
                         "enlarge split.val or check the labels")
    if mode in ("sensitivity", "sensitivity_each_source"):
        if not 0.0 < target_sensitivity <= 1.0:
            raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity!r}")
        if mode == "sensitivity" or groups is None:
            return _sensitivity_threshold(score[y], target_sensitivity)
        groups = np.asarray(groups)
        if len(groups) != len(y):
            raise ValueError(f"groups has {len(groups)} rows but score_val has {len(score)}")
        return min(_sensitivity_threshold(score[y & (groups == g)], target_sensitivity)
                   for g in np.unique(groups[y]))
    if y.all():
        raise ValueError("validation split has no non-referable case; the Youden point needs both; "
                         "use evaluate.operating_point: sensitivity")
    candidates = np.unique(score)[::-1]  # high to low, so ties in J keep the stricter threshold
    called = score[None, :] >= candidates[:, None]  # (T, N)
    youden = called[:, y].mean(axis=1) - called[:, ~y].mean(axis=1)
    best = np.flatnonzero(youden >= youden.max() - 1e-12)[0]  # tolerance: 2/3 vs 1 - 1/3 in floats
    return float(candidates[best])


def predictive_values(y_ref: np.ndarray, score: np.ndarray, threshold: float) -> tuple[float, float]:
    """Positive and negative predictive value of ``score >= threshold`` (``NaN`` if undefined)."""
    y_ref = np.asarray(y_ref, dtype=bool)
    called = np.asarray(score) >= threshold
    ppv = float(y_ref[called].mean()) if called.any() else math.nan
    npv = float((~y_ref[~called]).mean()) if (~called).any() else math.nan
    return ppv, npv


def validate_predictions(y_true: np.ndarray, probs: np.ndarray, patients: Sequence | None = None,
                         name: str = "predictions") -> tuple[np.ndarray, np.ndarray]:
    """Check shapes and values at the boundary; returns ``(y_true int64, probs float64)``."""
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"{name}: probs must be (N, num_classes >= 2), got shape {probs.shape}")
    if y_true.ndim != 1 or len(y_true) != len(probs):
        raise ValueError(f"{name}: y_true must be (N,) with N = {len(probs)} rows of probs, got {y_true.shape}")
    if len(y_true) == 0:
        raise ValueError(f"{name}: no rows to evaluate")
    if patients is not None:
        if len(patients) != len(y_true):
            raise ValueError(f"{name}: {len(patients)} patient ids for {len(y_true)} rows")
        missing = [i for i, p in enumerate(patients) if p is None or p != p or str(p).strip() == ""]
        if missing:  # all missing ids would otherwise pool into one pseudo-patient in the bootstrap
            raise ValueError(f"{name}: row {missing[0]}: patient id is missing ({len(missing)} rows); "
                             "use the photo id as the patient when patients are unknown")
    if not np.issubdtype(y_true.dtype, np.integer):
        if not np.all(np.isfinite(y_true.astype(np.float64))) or np.any(y_true != np.round(y_true)):
            row = int(np.flatnonzero(~np.isfinite(y_true) | (y_true != np.round(y_true)))[0])
            raise ValueError(f"{name}: row {row}: grade must be an integer, got {y_true[row]!r}")
    y_true = y_true.astype(np.int64)
    num_classes = probs.shape[1]
    bad = np.flatnonzero((y_true < 0) | (y_true >= num_classes))
    if len(bad):
        raise ValueError(f"{name}: row {int(bad[0])}: grade must be 0..{num_classes - 1}, "
                         f"got {int(y_true[bad[0]])}; does the checkpoint's num_classes match the labels?")
    row_sum = probs.sum(axis=1)
    bad = np.flatnonzero(~np.isfinite(row_sum) | (probs.min(axis=1) < 0) | (np.abs(row_sum - 1) > 1e-3))
    if len(bad):
        raise ValueError(f"{name}: row {int(bad[0])}: probabilities must be finite, >= 0 and sum to 1, "
                         f"got {probs[bad[0]].round(4).tolist()}; pass softmax outputs, not logits")
    return y_true, probs


def compute_metrics(preds: Predictions, decision: Decision, cfg: EvaluateConfig, seed: int = 0,
                    class_names: Sequence[str] | None = None, alpha: float = 0.05) -> dict[str, Any]:
    """Every test-split number in one flat, JSON-ready dict (``NaN`` becomes ``None``).

    Args:
        preds: true grades, grade probabilities, patients (the bootstrap resampling unit) and, when
            not the one the probabilities imply, the referable score (:func:`referable_score`).
        decision: the referable-score threshold and grade cut-points, chosen beforehand on validation.
        cfg: ``referable_grade`` (grades at or above it are referable) and ``bootstrap`` (patient-level
            resamples for the intervals; 0: none).
        seed: seed of the bootstrap generator.
        class_names: one name per grade; defaults to :func:`grade_names`.
        alpha: 0.05 gives 95% intervals.

    Returns:
        Scalars (``qwk``, ``accuracy``, ``referable_auc``, ... and ``<metric>_ci_low``/
        ``_ci_high`` for QWK, referable AUC, sensitivity and specificity) plus ``per_class``:
        ``{grade name: {precision, recall, f1, support, auc}}``.
    """
    from dr_core.evaluation.cutpoints import decide_grades  # it imports this module

    patients, threshold, referable_grade = preds.patients, decision.threshold, cfg.referable_grade
    y_true, probs = validate_predictions(preds.y_true, preds.probs, patients, name="compute_metrics")
    num_classes = probs.shape[1]
    if not 1 <= referable_grade < num_classes:
        raise ValueError(f"referable_grade must be in 1..{num_classes - 1}, got {referable_grade}")
    names = list(class_names) if class_names is not None else grade_names(num_classes)
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes: {names}")
    y_pred = np.asarray(decide_grades(probs, decision.cutpoints), dtype=np.int64)
    y_ref = referable_labels(y_true, referable_grade)
    score = resolve_referable_score(probs, referable_grade, preds.score)
    called = score >= threshold

    def headline(idx: np.ndarray) -> dict[str, float]:
        sens, spec = sensitivity_specificity(y_ref[idx], score[idx], threshold)
        return {"qwk": quadratic_weighted_kappa(y_true[idx], y_pred[idx], num_classes),
                "referable_auc": binary_auc(y_ref[idx], score[idx]),
                "referable_sensitivity": sens, "referable_specificity": spec}

    full = headline(np.arange(len(y_true)))
    per_class = per_class_scores(y_true, y_pred, num_classes)
    auc = auc_one_vs_rest(y_true, probs)
    ppv, npv = predictive_values(y_ref, score, threshold)
    out: dict[str, Any] = {
        "n_images": len(y_true), "n_patients": len(set(map(str, patients))),
        "qwk": full["qwk"], "accuracy": accuracy(y_true, y_pred),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred, num_classes),
        "f1_macro": f1_macro(y_true, y_pred, num_classes), "auc_macro": _nanmean(auc),
        "ece": expected_calibration_error(probs, y_true, DEFAULT_BINS),
        "brier": brier_score(probs, y_true), "log_loss": log_loss(probs, y_true),
        "referable_grade": referable_grade, "referable_prevalence": float(y_ref.mean()),
        "referable_auc": full["referable_auc"], "referable_threshold": float(threshold),
        "referable_sensitivity": full["referable_sensitivity"],
        "referable_specificity": full["referable_specificity"],
        "referable_ppv": ppv, "referable_npv": npv,
        "referable_tp": int((called & y_ref).sum()), "referable_fp": int((called & ~y_ref).sum()),
        "referable_tn": int((~called & ~y_ref).sum()), "referable_fn": int((~called & y_ref).sum()),
        "bootstrap_resamples": cfg.bootstrap, "ci_level": 1 - alpha,
    }
    intervals = bootstrap_ci(headline, patients, cfg.bootstrap, seed, alpha)
    for name, interval in intervals.items():
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = interval.low, interval.high
        out[f"{name}_ci_skipped"] = interval.n_skipped
    out["per_class"] = {
        names[k]: {"precision": per_class["precision"][k], "recall": per_class["recall"][k],
                   "f1": per_class["f1"][k], "support": per_class["support"][k], "auc": auc[k]}
        for k in range(num_classes)}
    out = to_jsonable(out)
    out["referable_threshold"] = float(threshold)  # unrounded, so that it reproduces the calls exactly
    return out


def to_jsonable(value: Any, digits: int = 6) -> Any:
    """Numpy scalars to Python numbers, floats rounded, ``NaN``/``inf`` to ``None``, recursively."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, digits) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return round(float(value), digits) if math.isfinite(value) else None
    return value


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if len(finite) else math.nan
