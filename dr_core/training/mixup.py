"""Mixup (Zhang et al., 2018) for a training batch: each image is blended with another image of
the same batch, and the loss is blended with the same weight.

Blending the loss rather than the target works for every head of :mod:`dr_core.models.heads`
(classification, regression and ordinal) and keeps the class weights of ``weighted_ce``.
"""
from __future__ import annotations

from typing import Callable

import torch


def mix_batch(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Blend a batch with a shuffled copy of itself. Draws from torch's global generator, which the
    training loop seeds per epoch, so a resumed run mixes the same pairs.

    Args:
        x: images (B, C, H, W).
        y: grades (B,).
        alpha: the Beta(alpha, alpha) concentration of the blend weight; 0 returns the batch as it is.

    Returns:
        ``(mixed, y_other, lam)``: ``mixed = lam * x + (1 - lam) * x[perm]`` and ``y_other = y[perm]``.
    """
    if alpha < 0:
        raise ValueError(f"mixup alpha must be >= 0, got {alpha!r}")
    if alpha == 0 or x.shape[0] < 2:
        return x, y, 1.0
    lam = float(torch.distributions.Beta(float(alpha), float(alpha)).sample())
    perm = torch.randperm(x.shape[0]).to(x.device)
    return x.mul(lam).add_(x[perm], alpha=1.0 - lam), y[perm], lam


def mixed_loss(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], outputs: torch.Tensor,
               y: torch.Tensor, y_other: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam * loss(outputs, y) + (1 - lam) * loss(outputs, y_other)``; the plain loss when lam is 1."""
    if lam == 1.0:
        return loss_fn(outputs, y)
    return lam * loss_fn(outputs, y) + (1.0 - lam) * loss_fn(outputs, y_other)
