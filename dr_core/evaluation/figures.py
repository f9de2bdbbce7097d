"""Evaluation figures: confusion matrices, ROC curves, reliability diagram.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas directly, so no
display, pyplot state or backend switch is involved.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from dr_core.evaluation.calibration import ReliabilityBins

DPI = 110


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")


def _matrix_panel(ax, matrix: np.ndarray, names: Sequence[str], title: str, fmt: str) -> None:
    shown = np.nan_to_num(matrix.astype(np.float64))
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=max(shown.max(), 1e-9))
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, labels=names, rotation=30, ha="right")
    ax.set_yticks(ticks, labels=names)
    ax.set_xlabel("Predicted grade")
    ax.set_ylabel("True grade")
    ax.set_title(title)
    dark = shown > 0.55 * shown.max()
    for i in range(len(names)):
        for j in range(len(names)):
            text = "-" if np.isnan(matrix[i, j]) else format(matrix[i, j], fmt)
            ax.text(j, i, text, ha="center", va="center", fontsize=9,
                    color="white" if dark[i, j] else "black")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def plot_confusion(counts: np.ndarray, names: Sequence[str], path: Path, subtitle: str = "") -> None:
    """Counts and row-normalised (recall per true grade) matrices side by side."""
    counts = np.asarray(counts)
    rows = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.where(rows > 0, counts / rows, np.nan)
    fig = Figure(figsize=(12.5, 5.2))
    left, right = fig.subplots(1, 2)
    _matrix_panel(left, counts, names, "Counts", "d")
    _matrix_panel(right, normalised, names, "Row-normalised (fraction of each true grade)", ".2f")
    if subtitle:
        fig.suptitle(subtitle)
    fig.tight_layout()
    _save(fig, path)


def plot_roc(class_curves: Sequence[tuple[str, np.ndarray, np.ndarray, float]],
             referable_curve: tuple[str, np.ndarray, np.ndarray, float], operating_point: tuple[float, float],
             path: Path) -> None:
    """One-vs-rest ROC per grade (left) and the referable-DR ROC with its operating point (right).

    Args:
        class_curves: ``(label, fpr, tpr, auc)`` per grade; curves with no points are listed
            in the legend as not estimable.
        referable_curve: ``(label, fpr, tpr, auc)`` for referable DR.
        operating_point: ``(1 - specificity, sensitivity)`` at the chosen threshold.
        path: output PNG.
    """
    fig = Figure(figsize=(12.5, 5.6))
    left, right = fig.subplots(1, 2)
    colors = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"]
    for k, (label, fpr, tpr, auc) in enumerate(class_curves):
        color = colors[k % len(colors)]
        if len(fpr) == 0:
            left.plot([], [], color=color, label=f"{label} (not in test set)")
            continue
        left.plot(fpr, tpr, color=color, lw=1.8, label=f"{label} (AUC {auc:.3f})")
    label, fpr, tpr, auc = referable_curve
    left.plot(fpr, tpr, color="black", lw=2.2, ls="--", label=f"{label} (AUC {auc:.3f})")
    right.plot(fpr, tpr, color="black", lw=2.2, label=f"{label} (AUC {auc:.3f})")
    x, y = operating_point
    right.plot([x], [y], "o", color="#d62728", ms=9,
               label=f"operating point: sensitivity {y:.3f}, specificity {1 - x:.3f}")
    for ax, title in ((left, "One-vs-rest ROC per grade"), (right, "Referable DR")):
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls=":")
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("False positive rate (1 - specificity)")
        ax.set_ylabel("True positive rate (sensitivity)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8.5)
    fig.tight_layout()
    _save(fig, path)


def plot_reliability(bins: ReliabilityBins, ece: float, path: Path) -> None:
    """Reliability diagram (accuracy per confidence bin against the diagonal) over a count histogram."""
    fig = Figure(figsize=(6.4, 7.0))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = bins.upper - bins.lower
    keep = bins.nonempty
    top.bar(bins.lower[keep], bins.accuracy[keep], width=width[keep], align="edge", color="#4c72b0",
            edgecolor="white", alpha=0.85, label="accuracy in bin")
    top.hlines(bins.confidence[keep], bins.lower[keep], bins.upper[keep], color="#c44e52", lw=2.2,
               label="mean confidence in bin")
    top.plot([0, 1], [0, 1], color="0.3", ls="--", lw=1, label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("Accuracy of the predicted grade")
    top.set_title(f"Reliability diagram (top-label), ECE {ece:.3f}")
    top.legend(loc="upper left", fontsize=8.5)
    top.grid(alpha=0.3)
    bottom.bar(bins.lower, bins.count, width=width, align="edge", color="0.5", edgecolor="white")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("Confidence (largest class probability)")
    bottom.set_ylabel("Photos")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
