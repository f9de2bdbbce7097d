"""One epoch function for train, val and test: ``optimizer=None`` means evaluation."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from dr_core.models.heads import to_probs
from dr_core.training.mixup import mix_batch, mixed_loss
from dr_core.models.backbone import frozen_modules_to_eval
from dr_core.runtime.progress import progress


SYNC_EVERY = 16  # batches between host reads of the running loss (NaN check, progress bar)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class OutOfMemory(RuntimeError):
    """The device ran out of memory; the message names the settings that fix it."""


@dataclass
class StepContext:
    """How batches are run: device, precision and optimisation details."""

    device: torch.device
    autocast_dtype: torch.dtype | None = None  # None: full precision
    scaler: torch.amp.GradScaler | None = None
    scheduler: Any = None  # stepped once per optimizer step
    grad_accum: int = 1
    grad_clip: float = 0.0
    channels_last: bool = False
    frozen_backbone: bool = False  # stage 1: backbone in eval mode under no_grad
    ema: Any = None  # timm ModelEmaV3 or None
    lr_hint: str = "train.lr_stage2"
    ddp_module: nn.Module | None = None  # DDP(TwoStageForward(model)) when distributed
    head: str = "classification"  # classification | regression | ordinal (dr_core.models.heads)
    num_classes: int = 5
    mixup_alpha: float = 0.0  # > 0: training batches are blended (dr_core.training.mixup)
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None  # training batches, on the device (augment_on)


@dataclass
class EpochResult:
    """Mean loss and the epoch's predictions."""

    loss: float
    y_true: np.ndarray
    probs: np.ndarray  # (N, K) grade probabilities (dr_core.models.heads.to_probs)
    seconds: float = 0.0

    @property
    def y_pred(self) -> np.ndarray:
        return self.probs.argmax(1) if len(self.probs) else np.zeros(0, dtype=np.int64)

    @property
    def accuracy(self) -> float:
        return float((self.y_pred == self.y_true).mean()) if len(self.y_true) else float("nan")


def set_frozen_backbone_mode(model: nn.Module) -> None:
    """Stage 1: every module in eval mode (BatchNorm statistics frozen, no drop-path) except the
    model's own top-level flag, which timm's ``forward_head`` reads to apply head dropout."""
    model.eval()
    model.training = True
    model.get_classifier().train()


def forward(model: nn.Module, x: torch.Tensor, frozen_backbone: bool) -> torch.Tensor:
    """Raw outputs (B, width of the head). With a frozen backbone the features are computed
    without autograd."""
    if frozen_backbone:
        with torch.no_grad():
            feats = model.forward_features(x)  # (B, C, h, w): no graph kept for the backbone
        return model.forward_head(feats)
    return model(x)


class TwoStageForward(nn.Module):
    """``forward`` as a module, so that DDP can wrap the frozen-backbone stage too."""

    def __init__(self, model: nn.Module, frozen_backbone: bool) -> None:
        super().__init__()
        self.model = model
        self.frozen_backbone = frozen_backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward(self.model, x, self.frozen_backbone)


def run_epoch(model: nn.Module, loader: DataLoader, loss_fn: Callable, ctx: StepContext,
              optimizer: torch.optim.Optimizer | None = None, desc: str = "",
              epoch: int = 0) -> EpochResult:
    """Run one pass over ``loader``; train when an optimizer is given, else evaluate.

    Raises:
        TrainingDiverged: the loss is NaN or infinite (names the epoch and batch).
    """
    train = optimizer is not None
    if train and ctx.frozen_backbone:
        set_frozen_backbone_mode(model)
    elif train:
        model.train()
        frozen_modules_to_eval(model)  # train.freeze_stride: early layers keep their statistics
    if train:
        optimizer.zero_grad(set_to_none=True)
    else:
        model.eval()
    start = time.perf_counter()
    # Running sums stay on the device; the host reads them only every SYNC_EVERY batches (and on
    # the first and last), so a GPU is not stalled by a sync per batch.
    loss_sum = torch.zeros((), device=ctx.device, dtype=torch.float64)
    correct = torch.zeros((), device=ctx.device, dtype=torch.int64)
    seen, checked = 0, 0
    y_true, probs_all = [], []
    n_batches = len(loader)
    # One iterator over the loader. tqdm.auto, used before, built a second one when constructed (an extra set of
    # worker processes per epoch, and the shuffle drawn a generator step later than designed).
    bar = progress(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True, mininterval=1.0)
    grad_ctx = contextlib.nullcontext() if train else torch.no_grad()
    with grad_ctx:
        for i, (x, y) in enumerate(bar):
            x = x.to(ctx.device, non_blocking=True)
            y = y.to(ctx.device, non_blocking=True)
            if train and ctx.augment is not None:
                x = ctx.augment(x)  # uint8 from the loader -> augmented, normalised float
            y_other, lam = y, 1.0
            if train and ctx.mixup_alpha > 0:
                x, y_other, lam = mix_batch(x, y, ctx.mixup_alpha)
            if ctx.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            amp = (torch.autocast(ctx.device.type, dtype=ctx.autocast_dtype)
                   if ctx.autocast_dtype is not None else contextlib.nullcontext())
            try:
                with amp:
                    if train and ctx.ddp_module is not None:
                        logits = ctx.ddp_module(x)  # gradients all-reduced across processes
                    else:
                        logits = forward(model, x, ctx.frozen_backbone and train)
                    loss = mixed_loss(loss_fn, logits.float(), y, y_other, lam)
                if train:
                    step_now = (i + 1) % ctx.grad_accum == 0 or i + 1 == n_batches
                    _backward_step(model, loss / ctx.grad_accum, optimizer, ctx, step_now)
            except torch.OutOfMemoryError as err:
                raise OutOfMemory(
                    f"{desc or 'epoch'} (epoch {epoch}), batch {i + 1}/{n_batches}: out of {ctx.device.type} "
                    f"memory with a batch of {tuple(x.shape)} (B, C, H, W). Lower train.batch_size (keep the "
                    "effective batch with train.grad_accum), lower train.image_size, or enable "
                    "train.mixed_precision") from err
            probs = to_probs(ctx.head, logits.detach(), ctx.num_classes)
            loss_sum += loss.detach() * y.shape[0]
            correct += (probs.argmax(1) == y).sum()
            seen += y.shape[0]
            y_true.append(y)
            probs_all.append(probs)
            if i == 0 or (i + 1) % SYNC_EVERY == 0 or i + 1 == n_batches:
                total = loss_sum.item()
                if not math.isfinite(total):
                    raise TrainingDiverged(
                        f"{desc or 'epoch'} (epoch {epoch}), batch {checked + 1}-{i + 1}/{n_batches}: "
                        f"loss is {total}. Likely fixes: lower the learning rate ({ctx.lr_hint}), set "
                        "train.mixed_precision=false (fp16 overflow), or check the inputs for NaN")
                checked = i + 1
                bar.set_postfix(loss=f"{total / seen:.4f}", acc=f"{int(correct) / seen:.2%}", refresh=False)
    bar.close()
    if not seen:
        return EpochResult(math.nan, np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32))
    return EpochResult(
        loss=loss_sum.item() / seen,
        y_true=torch.cat(y_true).cpu().numpy(),
        probs=torch.cat(probs_all).cpu().numpy(),
        seconds=time.perf_counter() - start,
    )


def _backward_step(model: nn.Module, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                   ctx: StepContext, step_now: bool) -> None:
    if ctx.scaler is not None:
        ctx.scaler.scale(loss).backward()
    else:
        loss.backward()
    if not step_now:
        return
    if ctx.grad_clip > 0:
        if ctx.scaler is not None:
            ctx.scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], ctx.grad_clip)
    if ctx.scaler is not None:
        ctx.scaler.step(optimizer)
        ctx.scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ctx.scheduler is not None:
        ctx.scheduler.step()
    if ctx.ema is not None:
        ctx.ema.update(model)
