"""Output heads: how a network's raw outputs become a grade distribution.

``train.loss`` chooses the head:

- ``ce`` / ``weighted_ce`` / ``focal``: classification, K logits, softmax.
- ``regression``: one output, the grade itself (smooth-L1 or MSE on the integer grade), as in the
  top APTOS 2019 solutions; grades come from cut-points on it (:mod:`dr_core.evaluation.cutpoints`).
- ``ordinal``: K-1 cumulative logits, ``sigmoid(o_k) = P(grade >= k)``, binary cross-entropy
  on the targets ``[grade >= k]``.

Every head is turned into probabilities ``(N, K)`` in one place (:func:`to_probs`), so metrics,
reports, calibration and the referable-DR score work the same for all three:

- ordinal: ``P(grade = k) = P(>= k) - P(>= k+1)``, the cumulative curve made non-increasing first;
  the referable score ``sum_{k >= 2} P(k)`` is then exactly ``P(grade >= 2)``.
- regression: a Gaussian kernel of width ``REGRESSION_SIGMA`` grades around the predicted value
  ``s``. Its argmax is the nearest grade (the usual rounding), and every tail sum
  ``P(grade >= g)`` increases with ``s``, so ROC curves rank photos by ``s`` itself. The
  calibration figures of a regression model describe that kernel, not a fitted distribution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CLASSIFICATION_LOSSES = ("ce", "weighted_ce", "focal")
HEADS = ("classification", "regression", "ordinal")
REGRESSION_SIGMA = 0.5  # grades


def head_for_loss(loss: str) -> str:
    """The head a ``train.loss`` value trains."""
    if loss in CLASSIFICATION_LOSSES:
        return "classification"
    if loss in ("regression", "ordinal"):
        return loss
    raise ValueError(f"unknown loss {loss!r}")


def num_outputs(head: str, num_classes: int) -> int:
    """Width of the final layer: K logits, 1 grade value, or K-1 cumulative logits."""
    if head == "classification":
        return num_classes
    if head == "regression":
        return 1
    if head == "ordinal":
        return num_classes - 1
    raise ValueError(f"unknown head {head!r}; valid: {list(HEADS)}")


def _regression_scores(outputs: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Log-kernel ``(B, K)`` of the regression head: ``-(s - k)^2 / (2 sigma^2)`` for grades k;
    its softmax is the grade distribution of :func:`to_probs`."""
    grades = torch.arange(num_classes, device=outputs.device, dtype=torch.float32)
    return -((outputs.reshape(-1, 1) - grades) ** 2) / (2 * REGRESSION_SIGMA ** 2)


def to_probs(head: str, outputs: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Grade probabilities ``(B, K)`` (float32, rows sum to 1) from raw outputs."""
    outputs = outputs.float()
    if head == "classification":
        return outputs.softmax(-1)
    if head == "regression":
        return _regression_scores(outputs, num_classes).softmax(-1)
    if head == "ordinal":
        at_least = torch.sigmoid(outputs).cummin(dim=-1).values  # P(>= 1) >= P(>= 2) >= ...
        ones = torch.ones_like(at_least[:, :1])
        zeros = torch.zeros_like(at_least[:, :1])
        upper = torch.cat([ones, at_least], dim=1)  # P(>= k), k = 0..K-1
        lower = torch.cat([at_least, zeros], dim=1)  # P(>= k+1)
        return (upper - lower).clamp_min(0.0)
    raise ValueError(f"unknown head {head!r}; valid: {list(HEADS)}")


class RegressionLoss(nn.Module):
    """Smooth-L1 (Huber, beta 1) or MSE between the single output and the integer grade."""

    def __init__(self, kind: str = "smooth_l1") -> None:
        super().__init__()
        if kind not in ("smooth_l1", "mse"):
            raise ValueError(f"regression loss must be smooth_l1 or mse, got {kind!r}")
        self.kind = kind

    def forward(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred = outputs.float().reshape(-1)
        target = target.float()
        if self.kind == "mse":
            return F.mse_loss(pred, target)
        return F.smooth_l1_loss(pred, target, beta=1.0)


class OrdinalLoss(nn.Module):
    """Binary cross-entropy of the K-1 cumulative logits against ``[grade >= k]``, k = 1..K-1."""

    def forward(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        outputs = outputs.float()
        k = torch.arange(1, outputs.shape[1] + 1, device=outputs.device)
        cumulative = (target[:, None] >= k).float()
        return F.binary_cross_entropy_with_logits(outputs, cumulative)
