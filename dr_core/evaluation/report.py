"""Write an evaluation to disk: metrics.json, a text report, figures, predictions and DVC plot data.

The referable-DR threshold is chosen on the validation split (:func:`choose_threshold`) and
applied unchanged to the evaluated split (:func:`write_evaluation`), so the reported
sensitivity and specificity are an honest estimate.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import classification_report, roc_curve

from dr_core.evaluation import figures
from dr_core.evaluation.by_source import HEADLINE, by_source
from dr_core.evaluation.calibration import DEFAULT_BINS, reliability_bins
from dr_core.config import EvaluateConfig
from dr_core.evaluation.cutpoints import decide_grades, expected_grade, optimize_cutpoints
from dr_core.evaluation.predictions import Decision, Predictions
from dr_core.evaluation.metrics import (binary_auc, choose_operating_point, compute_metrics, confusion_matrix, grade_names,
                             quadratic_weighted_kappa, referable_labels, resolve_referable_score,
                             sensitivity_specificity, to_jsonable, validate_predictions)

log = logging.getLogger(__name__)

OUTPUT_FILES = ("metrics.json", "headline.json", "classification_report.txt", "confusion_matrix.png", "roc_curves.png",
                "calibration.png", "predictions.csv", "plots/roc_referable.csv", "plots/calibration.csv")


def choose_threshold(val_y_true: np.ndarray, val_probs: np.ndarray, cfg: EvaluateConfig,
                     cutpoints: Sequence[float] | None = None, val_score: np.ndarray | None = None,
                     val_sources: Sequence[str] | None = None) -> dict[str, Any]:
    """The referable-DR operating point, chosen on validation only (JSON-ready).

    Args:
        cutpoints: the grade rule in use (:func:`choose_cutpoints`; ``None`` = argmax), for ``val_qwk``.
        val_score: the referable score, when it is not the one ``val_probs`` imply (fellow-eye blending).
        val_sources: each val photo's source, for ``operating_point: sensitivity_each_source``.

    Returns:
        ``threshold`` (call referable when the score is at least this), how it was chosen
        (``mode``, ``target_sensitivity``, ``referable_grade``, the fellow-eye blending the score had)
        and what the model achieves on
        validation (``val_sensitivity``, ``val_specificity``, ``val_auc`` of referable DR, ``val_qwk``
        with the grade rule, ``val_n_images``, ``val_n_referable``), to set beside the test figures.
    """
    val_y_true, val_probs = validate_predictions(val_y_true, val_probs, name="val")
    y_ref = referable_labels(val_y_true, cfg.referable_grade)
    score = resolve_referable_score(val_probs, cfg.referable_grade, val_score)
    threshold = choose_operating_point(y_ref, score, cfg.operating_point, cfg.target_sensitivity, val_sources)
    sens, spec = sensitivity_specificity(y_ref, score, threshold)
    log.info("operating point (%s) on val: referable score >= %.4f, sensitivity %.3f, specificity %.3f "
             "(%d photos, %d referable)", cfg.operating_point, threshold, sens, spec, len(y_ref), y_ref.sum())
    point = to_jsonable({
        "threshold": threshold, "mode": cfg.operating_point,
        "target_sensitivity": cfg.target_sensitivity if cfg.operating_point != "youden" else None,
        "referable_grade": cfg.referable_grade, "fellow_eye_weight": cfg.fellow_eye_weight,
        "fellow_eye_scope": cfg.fellow_eye_scope, "val_sensitivity": sens, "val_specificity": spec,
        "val_auc": binary_auc(y_ref, score),
        "val_qwk": quadratic_weighted_kappa(val_y_true, decide_grades(val_probs, cutpoints), val_probs.shape[1]),
        "val_n_images": len(y_ref), "val_n_referable": int(y_ref.sum())})
    point["threshold"] = float(threshold)  # unrounded: rounding up could drop a validation case
    return point


def choose_cutpoints(val_y_true: np.ndarray, val_probs: np.ndarray, cfg: EvaluateConfig) -> list[float] | None:
    """Grade cut-points on the expected grade, tuned on validation for QWK (``grade_rule: qwk``);
    ``None`` for ``grade_rule: argmax``."""
    if cfg.grade_rule != "qwk":
        return None
    val_y_true, val_probs = validate_predictions(val_y_true, val_probs, name="val")
    k = val_probs.shape[1]
    before = quadratic_weighted_kappa(val_y_true, decide_grades(val_probs), k)
    cuts = optimize_cutpoints(val_y_true, expected_grade(val_probs), k)
    after = quadratic_weighted_kappa(val_y_true, decide_grades(val_probs, cuts), k)
    log.info("grade cut-points tuned on val: %s (val QWK %.4f with argmax, %.4f with the cut-points)",
             np.round(cuts, 3).tolist(), before, after)
    return [float(c) for c in cuts]


def write_evaluation(out_dir: str | Path, preds: Predictions, decision: Decision, cfg: EvaluateConfig,
                     class_names: Sequence[str] | None = None, prefix: str | None = "test", seed: int = 0,
                     blocks: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Score one split at a fixed referable threshold and write every output.

    Args:
        out_dir: folder for the outputs (created); see ``OUTPUT_FILES`` and ``plots/roc_grade_<k>.csv``.
        preds: photo and patient ids, grades ``(N,)``, softmax probabilities ``(N, K)``, when not
            the one the probabilities imply (fellow-eye blending) the referable score, and when known each
            photo's source: the headline figures of each source then sit beside the overall ones
            (``test.<source>.qwk``, :mod:`dr_core.evaluation.by_source`).
        decision: the referable-score threshold and grade cut-points, chosen beforehand on other data
            (:func:`choose_threshold`, :func:`choose_cutpoints`; no cut-points: the most probable
            grade); with the operating point they came from, its validation numbers appear in the
            report and metrics.json.
        cfg: ``referable_grade`` and ``bootstrap`` are used here.
        class_names: one per grade (default: clinical names for 5 grades, else ``grade k``).
        prefix: top-level key of metrics.json (``{"test": {...}}``, flattened by DVC to
            ``test.qwk``); ``None`` writes the metrics at the top level.
        seed: seed of the patient bootstrap.
        blocks: more top-level entries of metrics.json beside ``prefix`` (the evaluate stage's ``val``).

    Returns:
        The metrics (unprefixed) as written to metrics.json.
    """
    out_dir = Path(out_dir)
    ids, patients, operating_point = preds.ids, preds.patients, decision.operating_point
    y_true, probs = validate_predictions(preds.y_true, preds.probs, patients, name=prefix or "evaluated split")
    if len(ids) != len(y_true):
        raise ValueError(f"{len(ids)} ids for {len(y_true)} rows of predictions")
    names = list(class_names) if class_names is not None else grade_names(probs.shape[1])
    y_pred = decide_grades(probs, decision.cutpoints)
    metrics = compute_metrics(preds, decision, cfg, seed, names)
    # QWK of the most probable grade too, so that grade rules can be compared on one run
    metrics["qwk_argmax"] = to_jsonable(quadratic_weighted_kappa(y_true, probs.argmax(axis=1), probs.shape[1]))
    if operating_point is not None:
        metrics["val_referable_sensitivity"] = operating_point["val_sensitivity"]
        metrics["val_referable_specificity"] = operating_point["val_specificity"]
        for src, dst in (("val_auc", "val_referable_auc"), ("val_qwk", "val_qwk")):
            if src in operating_point:  # absent from operating_point.json files of older versions
                metrics[dst] = operating_point[src]
    per_source = by_source(preds, decision, cfg, seed)
    metrics.update(per_source)

    out_dir.mkdir(parents=True, exist_ok=True)
    report = {prefix: metrics, **(blocks or {})} if prefix else metrics
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    if prefix:  # the DVC metric: a dozen headline figures, so that `dvc exp show` fits a terminal
        (out_dir / "headline.json").write_text(json.dumps(headline(report), indent=2) + "\n")
    score = resolve_referable_score(probs, cfg.referable_grade, preds.score)
    _write_predictions(out_dir / "predictions.csv", ids, patients, y_true, y_pred, probs, score, decision.threshold,
                       preds.sources)
    (out_dir / "classification_report.txt").write_text(
        format_report(metrics, y_true, y_pred, names, prefix or "evaluated", operating_point, per_source))
    _write_figures(out_dir, y_true, probs, y_pred, score, metrics, names, cfg.referable_grade)
    log.info("%s: QWK %s, referable AUC %s, sensitivity %s, specificity %s -> %s", prefix or "evaluated",
             _ci(metrics, "qwk"), _ci(metrics, "referable_auc"), _ci(metrics, "referable_sensitivity"),
             _ci(metrics, "referable_specificity"), out_dir)
    return metrics


HEADLINE = ("qwk", "referable_auc", "referable_sensitivity", "referable_specificity")


def headline(report: Mapping[str, Any]) -> dict[str, Any]:
    """The figures that DVC tracks as metrics (``dvc exp show``, ``dvc metrics diff``): QWK, referable AUC,
    sensitivity and specificity of each block (``test``, ``val``) and of each source nested in it.
    Everything else (counts, per-class scores, interval bounds) stays in metrics.json, a plain output."""
    out: dict[str, Any] = {}
    for block, figures in report.items():
        if not isinstance(figures, Mapping):
            continue
        kept = {key: figures[key] for key in HEADLINE if key in figures}
        kept.update({name: {key: sub[key] for key in HEADLINE if key in sub}
                     for name, sub in figures.items() if isinstance(sub, Mapping) and "referable_auc" in sub})
        out[block] = kept
    return out


PREDICTION_FORMAT = "%.9g"  # float32 round-trips in 9 significant digits


def write_predictions(path: Path, preds: Predictions, decision: Decision, cfg: EvaluateConfig) -> None:
    """One row per photo (as ``predictions.csv``): grades under ``decision``, probabilities, referable score
    and call."""
    y_pred = decide_grades(preds.probs, decision.cutpoints)
    score = resolve_referable_score(preds.probs, cfg.referable_grade, preds.score)
    _write_predictions(path, preds.ids, preds.patients, preds.y_true, y_pred, preds.probs, score, decision.threshold,
                       preds.sources)


def _write_predictions(path: Path, ids: Sequence, patients: Sequence, y_true: np.ndarray,
                       y_pred: np.ndarray, probs: np.ndarray, score: np.ndarray, threshold: float,
                       sources: Sequence | None = None) -> None:
    table = pd.DataFrame({"id": list(ids), "patient": list(patients), "true_grade": y_true,
                          "pred_grade": y_pred})
    if sources is not None:
        table.insert(2, "source", list(sources))
    for k in range(probs.shape[1]):
        table[f"prob_{k}"] = probs[:, k]
    table["referable_score"] = score
    table["referable_pred"] = score >= threshold  # the referral rule, stated beside every grade:
    table["referral_threshold"] = threshold       # referable_pred = referable_score >= referral_threshold
    # significant digits, not decimals: a regression head's scores reach 1e-6 and below, and six
    # decimals would tie them, so an AUC recomputed from this file (crossval) would drift from metrics.json
    table.to_csv(path, index=False, float_format=PREDICTION_FORMAT)


def _roc_points(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if y.all() or not y.any():
        return np.empty(0), np.empty(0)
    fpr, tpr, _ = roc_curve(y, score)
    return fpr, tpr


def _write_figures(out_dir: Path, y_true: np.ndarray, probs: np.ndarray, y_pred: np.ndarray,
                   score: np.ndarray, metrics: dict[str, Any], names: list[str], referable_grade: int) -> None:
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    num_classes = probs.shape[1]
    counts = confusion_matrix(y_true, y_pred, num_classes)
    figures.plot_confusion(counts, names, out_dir / "confusion_matrix.png",
                           f"{len(y_true)} photos, QWK {_fmt(metrics['qwk'])}, "
                           f"accuracy {_fmt(metrics['accuracy'])}")
    class_curves = []
    for k, name in enumerate(names):
        fpr, tpr = _roc_points(y_true == k, probs[:, k])
        pd.DataFrame({"fpr": fpr, "tpr": tpr}).to_csv(plots / f"roc_grade_{k}.csv", index=False,
                                                      float_format="%.6f")
        class_curves.append((name, fpr, tpr, _num(metrics["per_class"][name]["auc"])))
    y_ref = referable_labels(y_true, referable_grade)
    fpr, tpr = _roc_points(y_ref, score)
    pd.DataFrame({"fpr": fpr, "tpr": tpr}).to_csv(plots / "roc_referable.csv", index=False, float_format="%.6f")
    referable_name = f"Referable, grade >= {referable_grade}"
    sens, spec = metrics["referable_sensitivity"], metrics["referable_specificity"]
    point = (1 - _num(spec), _num(sens))
    figures.plot_roc(class_curves, (referable_name, fpr, tpr, _num(metrics["referable_auc"])),
                     point, out_dir / "roc_curves.png")
    bins = reliability_bins(probs, y_true, DEFAULT_BINS)
    keep = bins.nonempty
    pd.DataFrame({"confidence": bins.confidence[keep], "accuracy": bins.accuracy[keep],
                  "count": bins.count[keep], "bin_lower": bins.lower[keep], "bin_upper": bins.upper[keep]}
                 ).to_csv(plots / "calibration.csv", index=False, float_format="%.6f")
    figures.plot_reliability(bins, _num(metrics["ece"]), out_dir / "calibration.png")


def _num(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(metrics: dict[str, Any], key: str) -> str:
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    if low is None or high is None:
        return f"{_fmt(metrics[key])}"
    return f"{_fmt(metrics[key])}  [{_fmt(low)}, {_fmt(high)}]"


def format_report(metrics: dict[str, Any], y_true: np.ndarray, y_pred: np.ndarray, names: list[str],
                  split: str, operating_point: Mapping[str, Any] | None = None,
                  per_source: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """Plain-text report: headline metrics, per-grade table, confusion matrix, referable-DR block, and the
    headline figures of each source (``per_source``, :func:`dr_core.evaluation.by_source.by_source`)."""
    num_classes = len(names)
    level = round(100 * metrics["ci_level"])
    ci_note = (f"[{level}% CI: percentile bootstrap over patients, {metrics['bootstrap_resamples']} "
               "resamples; the threshold is held fixed]" if metrics["bootstrap_resamples"] else
               "[no confidence intervals: evaluate.bootstrap is 0]")
    lines = [f"Diabetic retinopathy grading: {split} split",
             f"{metrics['n_images']} photos from {metrics['n_patients']} patients",
             "",
             f"Quadratic weighted kappa   {_ci(metrics, 'qwk')}",
             f"Accuracy                   {_fmt(metrics['accuracy'])}",
             f"Balanced accuracy          {_fmt(metrics['balanced_accuracy'])}",
             f"Macro F1                   {_fmt(metrics['f1_macro'])}",
             f"Macro one-vs-rest AUC      {_fmt(metrics['auc_macro'])}",
             f"Expected calibration error {_fmt(metrics['ece'])}  (top-label, {DEFAULT_BINS} bins)",
             f"Brier score / log loss     {_fmt(metrics['brier'])} / {_fmt(metrics['log_loss'])}",
             ci_note, "",
             classification_report(y_true, y_pred, labels=list(range(num_classes)), target_names=names,
                                   digits=3, zero_division=0),
             "One-vs-rest AUC per grade:"]
    width = max(len(n) for n in names)
    for name in names:
        lines.append(f"  {name:<{width}}  {_fmt(metrics['per_class'][name]['auc'])}")
    counts = confusion_matrix(y_true, y_pred, num_classes)
    lines += ["", "Confusion matrix (rows: true grade, columns: predicted grade):"]
    lines.append(" " * (width + 6) + "".join(f"{k:>7}" for k in range(num_classes)))
    for k, name in enumerate(names):
        lines.append(f"  {name:<{width}} {k:>2} " + "".join(f"{c:>7d}" for c in counts[k]))
    g = metrics["referable_grade"]
    if operating_point is None:
        rule = "given, not tuned on these photos"
        val_line = []
    else:
        rule = {"sensitivity": f"highest threshold with validation sensitivity >= "
                               f"{operating_point.get('target_sensitivity') or 0:.2f}",
                "sensitivity_each_source": f"highest threshold with validation sensitivity >= "
                                           f"{operating_point.get('target_sensitivity') or 0:.2f} in every source",
                }.get(operating_point["mode"], "Youden index (sensitivity + specificity - 1) on validation")
        val_line = [f"  validation sens / spec     {_fmt(operating_point['val_sensitivity'])} / "
                    f"{_fmt(operating_point['val_specificity'])}  ({operating_point['val_n_images']} photos, "
                    f"{operating_point['val_n_referable']} referable)"]
        if "val_auc" in operating_point:
            val_line.append(f"  validation AUC             {_fmt(operating_point['val_auc'])}")
    lines += ["", f"Referable DR (grade >= {g}: {names[g]} or worse)",
              f"  prevalence                 {_fmt(metrics['referable_prevalence'])}",
              f"  AUC                        {_ci(metrics, 'referable_auc')}",
              f"  operating point            score >= {metrics['referable_threshold']:.4f} ({rule})",
              *val_line,
              f"  sensitivity                {_ci(metrics, 'referable_sensitivity')}",
              f"  specificity                {_ci(metrics, 'referable_specificity')}",
              f"  PPV / NPV                  {_fmt(metrics['referable_ppv'])} / {_fmt(metrics['referable_npv'])}",
              f"  TP {metrics['referable_tp']}  FN {metrics['referable_fn']}  "
              f"TN {metrics['referable_tn']}  FP {metrics['referable_fp']}",
              "  referable score = sum of the probabilities of the referable grades", ""]
    if per_source:
        lines += ["Per source, at the same operating point (intervals resample the source's patients):"]
        width = max(len(name) for name in per_source)
        for name, block in per_source.items():
            figures_ = ", ".join(f"{label} {_ci(block, key)}" for label, key in zip(("QWK", "AUC", "sens", "spec"),
                                                                                 HEADLINE))
            lines.append(f"  {name:<{width}}  {block['n_images']} photos, {block['n_patients']} patients: {figures_}")
        lines.append("")
    return "\n".join(lines)
