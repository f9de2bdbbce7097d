"""Self-describing checkpoints, written atomically and read without executing pickles.

A checkpoint holds the weights plus everything needed to rebuild the input pipeline (model name,
image size, mean/std, preprocessing settings, class names), and for resuming the optimizer,
scheduler, scaler and early-stopping state.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from dr_core.runtime.io import write_atomic

FORMAT_VERSION = 1
REQUIRED_META = ("model_name", "num_classes", "image_size", "mean", "std", "preprocess", "class_names")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not fit the model it describes."""


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any],
                    train_state: dict[str, Any] | None = None) -> None:
    """Write ``{"format", "meta", "model", "train_state"}`` to ``path`` via a temp file and rename."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    payload = {"format": FORMAT_VERSION, "meta": meta,
               "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "train_state": train_state or {}}
    write_atomic(path, functools.partial(_save_synced, payload))


def _save_synced(payload: dict[str, Any], path: Path) -> None:
    with path.open("wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())  # on disk before the rename: a crash leaves the old file or the new one


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load the raw payload safely (``weights_only=True``)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"{path}: not a readable drgrade checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or "meta" not in payload or "model" not in payload:
        raise CheckpointError(f"{path}: not a drgrade checkpoint (expected keys 'meta' and 'model'); "
                              "plain timm weights go to model.pretrained_file instead")
    missing = [k for k in REQUIRED_META if k not in payload["meta"]]
    if missing:
        raise CheckpointError(f"{path}: checkpoint meta lacks {missing}")
    return payload


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    num_classes: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes, in eval mode, and return it with its meta.

    Args:
        path: a file written by :func:`save_checkpoint`.
        map_location: device for the tensors.
        num_classes: if given, the checkpoint must predict this many classes.
    """
    payload = read_checkpoint(path, map_location)
    meta = payload["meta"]
    if num_classes is not None and meta["num_classes"] != num_classes:
        raise CheckpointError(f"{path}: the model predicts {meta['num_classes']} classes, "
                              f"but {num_classes} are expected (model.num_classes)")
    if not timm.is_model(meta["model_name"]):
        raise CheckpointError(f"{path}: architecture {meta['model_name']!r} is unknown to this timm "
                              f"version ({timm.__version__})")
    from dr_core.models.heads import num_outputs
    from dr_core.models.backbone import create_timm

    meta.setdefault("head", "classification")  # checkpoints written before heads existed
    meta.setdefault("global_pool", "avg")  # ... or before model.global_pool
    if meta.get("head_norm"):
        raise CheckpointError(f"{path}: trained with model.head_norm=true, an option this version no longer has "
                              "(removed: no measured gain); retrain with this version to use it")
    if meta["global_pool"] == "catavgmax":
        raise CheckpointError(f"{path}: trained with model.global_pool=catavgmax, an option this version no longer "
                              "has (removed: no measured gain); retrain with this version to use it")
    model = create_timm(meta["model_name"], pretrained=False, global_pool=meta["global_pool"],
                        num_classes=num_outputs(meta["head"], meta["num_classes"]))
    result = model.load_state_dict(payload["model"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: weights do not fit {meta['model_name']}: {len(result.missing_keys)} missing "
            f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected "
            f"(e.g. {result.unexpected_keys[:3]})")
    return model.eval(), meta
