"""Two-stage training: frozen backbone (stage 1), then full fine-tuning (stage 2).

Everything the train stage does lives in :func:`fit`. State for resuming after a kill is kept in
``<save_dir>/last.pth`` after every epoch; all randomness is re-seeded from (seed, epoch), so a
resumed run ends exactly where an uninterrupted one does.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from dr_core.models.checkpoint import CheckpointMeta, read_checkpoint, save_checkpoint
from dr_core.config import Params
from dr_core.data.loaders import make_loaders
from dr_core.runtime.device import autocast_dtype, describe_device, pick_device, seed_everything
from dr_core.runtime.distributed import DistInfo, all_ranks_sum, gather_in_order, init_distributed, shutdown
from dr_core.runtime.io import write_atomic
from dr_core.runtime.lock import exclusive_folder
from dr_core.training.engine import EpochResult, StepContext, TwoStageForward, run_epoch
from dr_core.models.heads import head_for_loss, num_outputs
from dr_core.training.losses import build_loss, class_weights
from dr_core.evaluation.metrics import (accuracy, binary_auc, f1_macro, grade_names, quadratic_weighted_kappa, referable_labels,
                             referable_score)
from dr_core.models.backbone import build_model, early_parameter_names, freeze_early_layers, normalisation
from dr_core.training.optim import build_optimizer, param_groups
from dr_core.training.tracking import EpochLogger

log = logging.getLogger(__name__)


def stage_plan(params: Params) -> list[tuple[int, int, float]]:
    """``[(stage, epochs, lr)]``: stage 1 trains the head on a frozen backbone, stage 2 everything."""
    t = params.train
    if t.two_stage:
        return [(s, e, lr) for s, e, lr in ((1, t.epochs_stage1, t.lr_stage1), (2, t.epochs_stage2, t.lr_stage2))
                if e > 0]
    return [(2, t.epochs_stage1 + t.epochs_stage2, t.lr_stage2)]


def run_digest(params: Params, cache_dir: Path) -> str:
    """Identifies a run: the settings that shape training and the cached data it reads."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in params.to_dict().items() if k in
                         ("seed", "preprocess", "model", "train")}, sort_keys=True).encode())
    for split in ("train", "val"):
        h.update((cache_dir / f"{split}.csv").read_bytes())
    return h.hexdigest()[:16]


def _checkpoint_meta(params: Params, model_mean: tuple[float, ...], model_std: tuple[float, ...], epoch: int,
                     stage: int) -> CheckpointMeta:
    k = params.model.num_classes
    return CheckpointMeta(model_name=params.model.name, num_classes=k, image_size=params.train.image_size,
                          mean=model_mean, std=model_std, preprocess=params.preprocess, class_names=grade_names(k),
                          head=head_for_loss(params.train.loss), global_pool=params.model.global_pool,
                          referable_grade=params.evaluate.referable_grade, channels_last=params.train.channels_last,
                          epoch=epoch, stage=stage, params=params.to_dict())


def _resume_state(path: Path, digest: str) -> dict[str, Any] | None:
    """The payload of ``last.pth`` (``train_state`` and ``model``) if it can be resumed, else None."""
    if not path.exists():
        return None
    payload = read_checkpoint(path)
    state = payload["train_state"]
    if state.get("digest") != digest:
        log.info("ignoring %s: it belongs to other settings or data; starting afresh", path)
        return None
    if state.get("finished"):
        log.info("%s is a finished run; starting afresh", path)
        return None
    log.info("resuming from %s after epoch %d", path, state["epoch"])
    return {**state, "model": payload["model"]}


def fit(cache_dir: Path, save_dir: Path, live_dir: Path, params: Params,
        check: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train ``params.model`` on the cached train split, select on val, write checkpoints.

    Writes ``best_stage1.pth``, ``best_model.pth``, ``checkpoint_epoch_<n>.pth`` (every
    ``save_freq`` epochs), ``last.pth`` (resume state) and ``training_history.json`` to
    ``save_dir``, and per-epoch metrics through dvclive to ``live_dir``. ``save_dir`` is locked
    (:func:`dr_core.runtime.lock.exclusive_folder`) while training runs: a second training into it
    stops at once.

    Args:
        check: called before each epoch's checkpoints and before the final outputs are written; it
            raises to stop without writing them (the train stage:
            :func:`dr_core.config.drift.check_params_unchanged`).

    Returns:
        the summary: best epoch, best value of ``train.monitor``, epochs run.
    """
    device = pick_device(params.train.device)
    dist = init_distributed(device.type)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    with exclusive_folder(save_dir) if dist.is_main else contextlib.nullcontext():
        if dist.is_main:
            log.info("device: %s; %d process(es)", describe_device(device), dist.world_size)
        return _fit(cache_dir, save_dir, live_dir, params, device, dist, check or (lambda: None))


def _fit(cache_dir: Path, save_dir: Path, live_dir: Path, params: Params, device: torch.device, dist: DistInfo,
         check: Callable[[], None]) -> dict[str, Any]:
    t = params.train
    seed_everything(params.seed, deterministic=t.deterministic)

    head = head_for_loss(t.loss)
    model = build_model(params.model, num_outputs(head, params.model.num_classes))
    mean, std = normalisation(model)
    if t.freeze_stride:
        early_parameter_names(model, t.freeze_stride)  # fail now, not after stage 1, on a model without it
    loaders = make_loaders(cache_dir, params, mean, std, device, dist)
    weights = class_weights(loaders.train_grades, params.model.num_classes)
    if dist.is_main:
        _log_distribution(loaders.train_grades, weights, params.model.num_classes)
    loss_fn = build_loss(t.loss, weights, t.focal_gamma, t.focal_alpha, t.label_smoothing,
                         t.regression_loss).to(device)
    if dist.enabled and t.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if t.channels_last:
        model.to(memory_format=torch.channels_last)
    lr_scale = dist.world_size if t.lr_scaling == "linear" else 1

    digest = run_digest(params, cache_dir)
    state = _resume_state(save_dir / "last.pth", digest)
    if state is not None:
        model.load_state_dict(state.pop("model"))
    history: list[dict[str, float]] = state["history"] if state else []
    best = state["best"] if state else {"value": None, "epoch": 0, "stage1_value": None}
    done = state["epoch"] if state else 0
    tracker = EpochLogger(live_dir, history, extra_params={
        "device": str(device), "world_size": dist.world_size, "lr_scale": lr_scale,
        "effective_batch_size": t.batch_size * t.grad_accum * dist.world_size,
        "class_weights": [round(float(w), 4) for w in weights]}) if dist.is_main else None

    epoch = 0
    # "last": no selection on val (the final weights are best_model); val/qwk is still reported
    metric = "val/qwk" if t.monitor == "last" else t.monitor
    for stage, n_epochs, lr in stage_plan(params):
        first = epoch + 1
        epoch += n_epochs
        if done >= epoch:
            continue  # stage already finished before the interruption
        ctx, optimizer = stage_context(model, params, stage, lr * lr_scale, n_epochs, len(loaders.train),
                                        device, dist)
        ctx.augment = loaders.augment
        bad_epochs = 0
        if state is not None and state["stage"] == stage:
            optimizer.load_state_dict(state["optimizer"])
            ctx.scheduler.load_state_dict(state["scheduler"])
            if ctx.scaler is not None and state.get("scaler"):
                ctx.scaler.load_state_dict(state["scaler"])
            if ctx.ema is not None and state.get("ema"):
                ctx.ema.load_state_dict(state["ema"])
            bad_epochs = state["bad_epochs"]
        log.info("stage %d: %s, epochs %d-%d, lr %.2e", stage,
                 "backbone frozen, training the head" if stage == 1 and t.two_stage
                 else f"layers after output stride {t.freeze_stride} trained" if t.freeze_stride
                 else "all layers trained",
                 first, epoch, lr)
        for e in range(max(first, done + 1), epoch + 1):
            loaders.reseed(params.seed, e)
            torch.manual_seed(params.seed + e)
            tr = run_epoch(model, loaders.train, loss_fn, ctx, optimizer, f"stage {stage} epoch {e} [train]", e)
            eval_model = ctx.ema.module if ctx.ema is not None else model
            va = run_epoch(eval_model, loaders.val, loss_fn, ctx, None, f"stage {stage} epoch {e} [val]", e)
            tr, va = _gathered(dist, tr, None), _gathered(dist, va, loaders.val.sampler)
            row = _epoch_row(e, stage, tr, va, optimizer, params.model.num_classes,
                             params.evaluate.referable_grade)
            check()  # before anything of this epoch is written
            history.append(row)
            if dist.is_main:
                tracker.log_epoch(row)
            value = row[metric]
            improved = t.monitor == "last" or _improves(value, best["value"], metric)
            meta = _checkpoint_meta(params, mean, std, e, stage)
            save = save_checkpoint if dist.is_main else (lambda *a, **k: None)  # rank 0 writes
            if improved:
                best.update(value=value, epoch=e)
                save(save_dir / "best_model.pth", eval_model, meta)
                bad_epochs = 0
            else:
                bad_epochs += 1
            if stage == 1 and (t.monitor == "last" or _improves(value, best["stage1_value"], metric)):
                best["stage1_value"] = value
                save(save_dir / "best_stage1.pth", eval_model, meta)
            if t.save_freq and e % t.save_freq == 0:
                save(save_dir / f"checkpoint_epoch_{e}.pth", eval_model, meta)
            total = sum(n for _, n, _ in stage_plan(params))
            if dist.is_main:
                log.info("epoch %d/%d (stage %d): train loss %.4f acc %.2f%% | val loss %.4f acc %.2f%% qwk %.4f "
                         "auc %.4f%s", e, total, stage, row["train/loss"], 100 * row["train/acc"], row["val/loss"],
                         100 * row["val/acc"], row["val/qwk"], row["val/auc"], "  (best, saved)" if improved else "")
            stop = t.patience > 0 and bad_epochs >= t.patience
            finished = (stop and stage == stage_plan(params)[-1][0]) or e == total
            save(save_dir / "last.pth", model, meta, {
                "digest": digest, "epoch": e if not stop else epoch, "stage": stage, "history": history,
                "best": best, "bad_epochs": bad_epochs, "finished": finished,
                "optimizer": optimizer.state_dict(), "scheduler": ctx.scheduler.state_dict(),
                "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else None,
                "ema": ctx.ema.state_dict() if ctx.ema is not None else None})
            if stop:
                log.info("early stopping in stage %d: %s did not improve for %d epochs", stage, metric, bad_epochs)
                break
        state = None  # resume state applies to the interrupted stage only
    summary = {"best_epoch": best["epoch"], "best_value": best["value"], "monitor": metric,
               "epochs_run": len(history)}
    check()
    shutdown(dist)
    if not dist.is_main:
        return summary
    tracker.finish(summary)
    _write_json(save_dir / "training_history.json", {"history": history, "summary": summary})
    log.info("training done: best %s = %.4f at epoch %d; models in %s", metric,
             best["value"] if best["value"] is not None else float("nan"), best["epoch"], save_dir)
    return summary


def stage_context(model: nn.Module, params: Params, stage: int, lr: float, n_epochs: int,
                   n_batches: int, device: torch.device, dist: DistInfo = DistInfo()
                   ) -> tuple[StepContext, torch.optim.Optimizer]:
    t = params.train
    frozen = stage == 1 and t.two_stage
    for p in model.parameters():
        p.requires_grad_(not frozen)
    for p in model.get_classifier().parameters():
        p.requires_grad_(True)
    if not frozen and t.freeze_stride:
        n = freeze_early_layers(model, t.freeze_stride)
        log.info("stage %d: %d parameter tensors before output stride %d stay frozen (train.freeze_stride)",
                 stage, n, t.freeze_stride)
    groups = param_groups(model, lr, t.weight_decay, head_only=frozen,
                          backbone_lr_mult=1.0 if frozen else t.backbone_lr_mult)
    steps_per_epoch = -(-n_batches // t.grad_accum)
    optimizer, scheduler = build_optimizer(groups, n_epochs * steps_per_epoch,
                                           int(t.warmup_epochs * steps_per_epoch), t.min_lr_ratio)
    dtype = autocast_dtype(device, t.mixed_precision, t.amp_dtype)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    ema = None
    if t.ema and not frozen:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=t.ema_decay)
    ddp = None
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel
        ddp = DistributedDataParallel(TwoStageForward(model, frozen),
                                      device_ids=[device.index] if device.type == "cuda" else None)
    ctx = StepContext(device=device, autocast_dtype=dtype, scaler=scaler, scheduler=scheduler,
                      grad_accum=t.grad_accum, grad_clip=t.grad_clip, channels_last=t.channels_last,
                      frozen_backbone=frozen, ema=ema, lr_hint=f"train.lr_stage{stage}", ddp_module=ddp,
                      head=head_for_loss(t.loss), num_classes=params.model.num_classes,
                      mixup_alpha=t.mixup_alpha)
    return ctx, optimizer


def _gathered(dist: DistInfo, res: EpochResult, sampler) -> EpochResult:
    """Predictions and mean loss over all processes (val rows back in dataset order)."""
    if not dist.enabled:
        return res
    n = len(res.y_true)
    indices = np.asarray(sampler.indices) if sampler is not None else np.arange(n) * dist.world_size + dist.rank
    y_true, probs = gather_in_order(dist, indices, res.y_true, res.probs)
    loss = all_ranks_sum(dist, res.loss * n) / max(all_ranks_sum(dist, float(n)), 1)
    return EpochResult(loss=loss, y_true=y_true, probs=probs, seconds=res.seconds)


def _epoch_row(epoch: int, stage: int, tr: EpochResult, va: EpochResult, optimizer: torch.optim.Optimizer,
               num_classes: int, referable_grade: int = 2) -> dict[str, float]:
    row: dict[str, float] = {"epoch": epoch, "stage": stage,
                             "lr": max(g["lr"] for g in optimizer.param_groups)}
    for split, res in (("train", tr), ("val", va)):
        row[f"{split}/loss"] = res.loss
        row[f"{split}/acc"] = accuracy(res.y_true, res.y_pred)
        row[f"{split}/qwk"] = quadratic_weighted_kappa(res.y_true, res.y_pred, num_classes)
        row[f"{split}/f1_macro"] = f1_macro(res.y_true, res.y_pred, num_classes)
        # referable DR (grade >= evaluate.referable_grade) AUC; NaN when a split has one class only
        row[f"{split}/auc"] = binary_auc(referable_labels(res.y_true, referable_grade),
                                         referable_score(res.probs, referable_grade))
    # Timings go to the log only: a tracked output that a rerun changes would make identical runs differ.
    log.info("epoch %d: %.1f s (train %.1f images/s, all processes)", epoch, tr.seconds + va.seconds,
             len(tr.y_true) / max(tr.seconds, 1e-9))
    return row


def _improves(value: float, best: float | None, monitor: str) -> bool:
    """Whether ``value`` beats ``best``; NaN (e.g. QWK of a constant prediction) never does."""
    if best is None or np.isnan(best):
        return True
    if np.isnan(value):
        return False
    return value < best if monitor.endswith("loss") else value > best


def _log_distribution(grades: np.ndarray, weights: np.ndarray, num_classes: int) -> None:
    counts = np.bincount(grades, minlength=num_classes)
    names = grade_names(num_classes)
    for k in range(num_classes):
        log.info("train grade %d (%s): %d images (%.1f%%), class weight %.4f", k, names[k], counts[k],
                 100 * counts[k] / max(counts.sum(), 1), weights[k])


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2)
    write_atomic(path, lambda p: p.write_text(text))
