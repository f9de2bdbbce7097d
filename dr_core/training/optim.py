"""AdamW parameter groups and the warmup + cosine learning-rate schedule.

Why not timm's: ``timm.optim.param_groups_weight_decay`` has no head/backbone split (stage 1 trains the
head alone, stage 2 may give the backbone a lower LR), and ``timm.scheduler.CosineLRScheduler`` starts its
warmup at ``warmup_lr_init`` instead of ``lr / warmup_steps``, which would change every trained figure.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, lr: float, weight_decay: float, head_only: bool,
                 backbone_lr_mult: float = 1.0) -> list[dict]:
    """AdamW groups: no weight decay on norm and bias parameters; optional lower backbone LR.

    Args:
        model: a timm model (``get_classifier()`` names the head).
        lr: learning rate of the head.
        weight_decay: decay for weight matrices and kernels.
        head_only: stage 1: only the classifier head is optimised.
        backbone_lr_mult: backbone LR = ``lr * backbone_lr_mult`` (stage 2).
    """
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        is_head = id(p) in head_ids
        if (head_only and not is_head) or not p.requires_grad:
            continue
        decay = p.ndim > 1  # biases and norm scales/shifts are 1-D
        groups.setdefault((is_head, decay), []).append(p)
    out = []
    for (is_head, decay), params in sorted(groups.items()):
        group_lr = lr if is_head else lr * backbone_lr_mult
        out.append({"params": params, "lr": group_lr, "initial_lr": group_lr,
                    "weight_decay": weight_decay if decay else 0.0})
    return out


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float):
    """LR multiplier for step ``s``: linear warmup to 1, then cosine down to ``min_ratio``."""
    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def build_optimizer(groups: list[dict], total_steps: int, warmup_steps: int, min_ratio: float
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``groups`` and a per-step warmup + cosine scheduler."""
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup_steps, min_ratio))
    return optimizer, scheduler
