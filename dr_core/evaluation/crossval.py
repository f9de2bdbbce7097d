"""Out-of-fold figures: the test predictions of every fold of a cross-validation, pooled.

With ``split.folds: K`` and one run per ``split.fold``, each photograph is tested exactly once, by a
model that never saw its patient. Pooling the K ``results/predictions.csv`` gives figures on every
photograph instead of one fifth of them, with intervals that resample patients across folds.
Each photo keeps its own fold's grade cut-points and referral threshold (both chosen on that
fold's validation split), so the pooled sensitivity and specificity are those of the calls made.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dr_core.evaluation.bootstrap import bootstrap_ci
from dr_core.evaluation.metrics import (binary_auc, quadratic_weighted_kappa, referable_labels, sensitivity_specificity,
                             to_jsonable)

logger = logging.getLogger(__name__)

NEEDED = ("id", "patient", "true_grade", "pred_grade", "referable_score", "referable_pred")


def read_folds(paths: Sequence[str | Path]) -> pd.DataFrame:
    """The folds' ``predictions.csv`` files in one frame with a ``fold`` column (0, 1, ... in order).

    Raises:
        ValueError: a file lacks a column, or a photograph is tested in more than one fold (the
            files are not folds of one cross-validation).
    """
    frames = []
    for fold, path in enumerate(paths):
        frame = pd.read_csv(path, dtype={"id": str, "patient": str})
        missing = [c for c in NEEDED if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(missing)}; expected the predictions.csv "
                             "that the evaluate stage writes")
        frames.append(frame.assign(fold=fold))
    table = pd.concat(frames, ignore_index=True)
    repeated = table[table["id"].duplicated(keep=False)]
    if len(repeated):
        first = repeated.iloc[0]["id"]
        folds = sorted(repeated.loc[repeated["id"] == first, "fold"].tolist())
        raise ValueError(f"photograph {first!r} is tested in folds {folds} ({paths[folds[0]]}, "
                         f"{paths[folds[1]]}); out-of-fold pooling needs the folds of one split.folds "
                         f"run, each photograph tested once ({repeated['id'].nunique()} repeated)")
    return table


def out_of_fold(table: pd.DataFrame, num_classes: int, referable_grade: int = 2,
                n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Pooled QWK, referable AUC, sensitivity and specificity, with patient-bootstrap intervals,
    and the mean and range of the per-fold AUC and QWK (``table`` as :func:`read_folds` makes it)."""
    y_true = table["true_grade"].to_numpy(dtype=np.int64)
    y_pred = table["pred_grade"].to_numpy(dtype=np.int64)
    score = table["referable_score"].to_numpy(dtype=np.float64)
    called = table["referable_pred"].astype(bool).to_numpy().astype(np.float64)  # each fold's own calls, as 0/1
    y_ref = referable_labels(y_true, referable_grade)

    def headline(idx: np.ndarray) -> dict[str, float]:
        sens, spec = sensitivity_specificity(y_ref[idx], called[idx], 1.0)
        return {"qwk": quadratic_weighted_kappa(y_true[idx], y_pred[idx], num_classes),
                "referable_auc": binary_auc(y_ref[idx], score[idx]),
                "referable_sensitivity": sens, "referable_specificity": spec}

    out: dict = {"n_folds": int(table["fold"].nunique()), "n_images": len(table),
                 "n_patients": int(table["patient"].nunique()), "n_referable": int(y_ref.sum()),
                 **headline(np.arange(len(table)))}
    for name, interval in bootstrap_ci(headline, table["patient"].to_numpy(), n_bootstrap, seed).items():
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = interval.low, interval.high
    per_fold = [headline(np.flatnonzero(table["fold"].to_numpy() == f)) for f in sorted(table["fold"].unique())]
    for key in ("referable_auc", "qwk"):
        values = [p[key] for p in per_fold]
        out[f"fold_{key}"] = values
        out[f"fold_{key}_mean"] = float(np.nanmean(values))
    logger.info("out of fold: %d photographs in %d folds, referable AUC %.3f (%.3f-%.3f), QWK %.3f",
                out["n_images"], out["n_folds"], out["referable_auc"], out["referable_auc_ci_low"],
                out["referable_auc_ci_high"], out["qwk"])
    return to_jsonable(out)


HEADLINE = ("referable_auc", "qwk", "referable_sensitivity", "referable_specificity")


def pool_folds(fold_dirs: Sequence[Path], num_classes: int, referable_grade: int = 2, n_bootstrap: int = 1000,
               seed: int = 0) -> dict:
    """:func:`out_of_fold` of a cross-validation whose fold k was evaluated into ``fold_dirs[k]`` (its
    ``predictions.csv`` and ``metrics.json``), plus each fold's test photos and val figures
    (``fold_n_images``, ``fold_val_referable_auc``, ``fold_val_qwk``)."""
    table = read_folds([Path(d) / "predictions.csv" for d in fold_dirs])
    figures = out_of_fold(table, num_classes, referable_grade, n_bootstrap, seed)
    tests = [json.loads((Path(d) / "metrics.json").read_text())["test"] for d in fold_dirs]
    figures["fold_n_images"] = table.groupby("fold").size().tolist()
    for key in ("val_referable_auc", "val_qwk"):
        figures[f"fold_{key}"] = [t.get(key) for t in tests]
    return to_jsonable(figures)


def cv_metrics(figures: dict) -> dict:
    """What ``cv/metrics.json`` keeps of :func:`pool_folds`: the pooled headline figures with their
    intervals and the photo count as numbers, and the per-fold figures as lists under ``folds``
    (``dvc exp show`` tabulates only numbers, so the lists are in its ``--json`` but not its table)."""
    out = {"n_images": figures["n_images"]}
    for key in HEADLINE:
        out.update({name: figures.get(name) for name in (key, f"{key}_ci_low", f"{key}_ci_high")})
    out["folds"] = {"n_images": figures["fold_n_images"], "referable_auc": figures["fold_referable_auc"],
                    "qwk": figures["fold_qwk"], "val_referable_auc": figures["fold_val_referable_auc"],
                    "val_qwk": figures["fold_val_qwk"]}
    return out


def cv_table(figures: dict) -> str:
    """:func:`pool_folds`'s figures as markdown: the pooled figures, then one line per fold."""
    def ci(key: str) -> str:
        low, high = figures.get(f"{key}_ci_low"), figures.get(f"{key}_ci_high")
        value = figures[key]
        text = "n/a" if value is None else f"{value:.3f}"
        return text + (f" ({low:.3f}-{high:.3f})" if low is not None and high is not None else "")

    def num(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = [f"Out of fold: {figures['n_images']} photographs of {figures['n_patients']} patients "
             f"({figures['n_referable']} referable), each tested once in {figures['n_folds']} folds by the fold's "
             "model that never saw its patient (95% intervals resample patients)", "",
             "| referable AUC | QWK | sensitivity | specificity |", "|---|---|---|---|",
             "| " + " | ".join(ci(key) for key in HEADLINE) + " |", "",
             "| fold | test photos | test AUC | test QWK | val AUC | val QWK |",
             "|---|---|---|---|---|---|"]
    for k, n in enumerate(figures["fold_n_images"]):
        lines.append(f"| {k} | {n} | " + " | ".join(num(figures[f"fold_{key}"][k]) for key in (
            "referable_auc", "qwk", "val_referable_auc", "val_qwk")) + " |")
    return "\n".join(lines) + "\n"
