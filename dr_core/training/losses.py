"""Losses for imbalanced grades: ce, weighted_ce and focal (classification heads), the
regression and ordinal losses of :mod:`dr_core.models.heads`, and an optional pairwise ranking term on the
referable-DR score that can be added to any of them (``train.rank_weight``)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def class_weights(grades: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse-frequency weights normalised to mean 1: ``n / (K * count_k)``.

    A grade absent from ``grades`` would get an infinite weight; it gets the largest weight of
    the present grades instead.
    """
    counts = np.bincount(np.asarray(grades, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes)
    present = counts > 0
    weights[present] = counts.sum() / (num_classes * counts[present])
    if not present.all():
        weights[~present] = weights[present].max()
    return weights


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., 2017): ``-alpha_y * (1 - p_y)**gamma * log p_y``, averaged.

    With label smoothing the target is a distribution ``q`` and the loss is
    ``-sum_k q_k * alpha_k * (1 - p_k)**gamma * log p_k``.
    """

    def __init__(self, gamma: float = 2.0, alpha: torch.Tensor | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.register_buffer("alpha", None if alpha is None else alpha.float())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # logits (B, K) in float32 for a stable log-softmax under autocast
        log_p = F.log_softmax(logits.float(), dim=-1)
        k = logits.shape[-1]
        q = F.one_hot(target, k).float()
        if self.label_smoothing > 0:
            q = q * (1 - self.label_smoothing) + self.label_smoothing / k
        per_class = -q * (1 - log_p.exp()).pow(self.gamma) * log_p
        if self.alpha is not None:
            per_class = per_class * self.alpha
        return per_class.sum(-1).mean()


class ReferableRankLoss(nn.Module):
    """Pairwise logistic (RankNet) loss on the referable log-odds of
    :func:`dr_core.models.heads.referable_logit`: the mean over every (referable, non-referable) pair of
    the batch of ``softplus(z_non - z_ref)``. A smooth surrogate of ``1 - AUC`` of referable DR.

    A batch without both kinds of photo has no pair; its loss is 0 (with a graph, so that
    ``backward`` still works).
    """

    def __init__(self, head: str, num_classes: int, referable_grade: int = 2) -> None:
        super().__init__()
        if not 1 <= referable_grade < num_classes:
            raise ValueError(f"referable_grade must be in 1..{num_classes - 1}, got {referable_grade}")
        self.head, self.num_classes, self.referable_grade = head, num_classes, referable_grade

    def forward(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from dr_core.models.heads import referable_logit

        z = referable_logit(self.head, outputs, self.num_classes, self.referable_grade)
        referable = target >= self.referable_grade
        gaps = z[~referable][None, :] - z[referable][:, None]  # (n_referable, n_other)
        if gaps.numel() == 0:
            return z.sum() * 0.0
        return F.softplus(gaps).mean()


class WithRankLoss(nn.Module):
    """``base(outputs, target) + weight * rank(outputs, target)``."""

    def __init__(self, base: nn.Module, rank: ReferableRankLoss, weight: float) -> None:
        super().__init__()
        if weight <= 0:
            raise ValueError(f"rank weight must be > 0, got {weight}")
        self.base, self.rank, self.weight = base, rank, weight

    def forward(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.base(outputs, target) + self.weight * self.rank(outputs, target)


def build_loss(name: str, weights: np.ndarray | None = None, gamma: float = 2.0,
               focal_alpha: bool = False, label_smoothing: float = 0.0,
               regression_loss: str = "smooth_l1", rank_weight: float = 0.0,
               num_classes: int = 5, referable_grade: int = 2) -> nn.Module:
    """The loss ``name`` (ce | weighted_ce | focal | regression | ordinal); ``weights`` are
    per-class weights (weighted_ce, focal with ``focal_alpha``). A ``rank_weight`` above 0 adds
    that much of :class:`ReferableRankLoss` (grades ``>= referable_grade`` against the rest)."""
    from dr_core.models.heads import head_for_loss

    base = _base_loss(name, weights, gamma, focal_alpha, label_smoothing, regression_loss)
    if rank_weight < 0:
        raise ValueError(f"rank_weight must be >= 0, got {rank_weight}")
    if rank_weight == 0:
        return base
    return WithRankLoss(base, ReferableRankLoss(head_for_loss(name), num_classes, referable_grade), rank_weight)


def _base_loss(name: str, weights: np.ndarray | None, gamma: float, focal_alpha: bool,
               label_smoothing: float, regression_loss: str) -> nn.Module:
    from dr_core.models.heads import OrdinalLoss, RegressionLoss

    if name == "regression":
        return RegressionLoss(regression_loss)
    if name == "ordinal":
        return OrdinalLoss()
    w = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    if name == "ce":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if name == "weighted_ce":
        if w is None:
            raise ValueError("weighted_ce needs class weights")
        return nn.CrossEntropyLoss(weight=w, label_smoothing=label_smoothing)
    if name == "focal":
        if focal_alpha and w is None:
            raise ValueError("focal loss with focal_alpha=true needs class weights")
        return FocalLoss(gamma=gamma, alpha=w if focal_alpha else None, label_smoothing=label_smoothing)
    raise ValueError(f"unknown loss {name!r}; valid: ce, weighted_ce, focal, regression, ordinal")
