"""Losses for imbalanced grades: ce, weighted_ce and focal (classification heads), and the
regression and ordinal losses of :mod:`dr_core.models.heads`."""
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


def build_loss(name: str, weights: np.ndarray | None = None, gamma: float = 2.0,
               focal_alpha: bool = False, label_smoothing: float = 0.0,
               regression_loss: str = "smooth_l1") -> nn.Module:
    """The loss ``name`` (ce | weighted_ce | focal | regression | ordinal); ``weights`` are
    per-class weights (weighted_ce, focal with ``focal_alpha``)."""
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
