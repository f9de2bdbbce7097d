"""Self-describing checkpoints, written atomically and read without executing pickles.

A checkpoint holds the weights plus everything needed to rebuild the input pipeline (model name,
image size, mean/std, preprocessing settings, class names: :class:`CheckpointMeta`), and for
resuming the optimizer, scheduler, scaler and early-stopping state. On disk the meta stays a plain
dict, so checkpoints of earlier versions still load.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import timm
import torch
from torch import nn

from dr_core.config import ConfigError, InputError, PreprocessConfig, params_from_dict
from dr_core.config.params import GLOBAL_POOLS
from dr_core.models.heads import HEADS, num_outputs
from dr_core.runtime.io import write_atomic

FORMAT_VERSION = 1
REQUIRED_META = ("model_name", "num_classes", "image_size", "mean", "std", "preprocess", "class_names")


class CheckpointError(InputError, RuntimeError):
    """A checkpoint is missing, corrupt or does not fit the model it describes."""


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about its model and the input pipeline it was trained with."""

    model_name: str  # timm architecture
    num_classes: int  # grades
    image_size: int  # model input side, px
    mean: tuple[float, ...]  # normalisation the weights expect, per channel
    std: tuple[float, ...]
    preprocess: PreprocessConfig  # the cached, deterministic preprocessing of the training photos
    class_names: tuple[str, ...]  # one per grade
    head: str = "classification"  # classification | regression | ordinal (dr_core.models.heads)
    global_pool: str = "avg"
    referable_grade: int = 2  # evaluate.referable_grade of the run: referable DR is grade >= this
    channels_last: bool = False  # train.channels_last of the run: NHWC inputs
    epoch: int | None = None  # epoch and training stage the weights come from
    stage: int | None = None
    params: dict[str, Any] = field(default_factory=dict)  # all of params.yaml, as written by that version

    def __post_init__(self) -> None:
        for name in ("mean", "std", "class_names"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        """The plain dict stored in the checkpoint file (lists, not tuples: ``weights_only`` loading)."""
        return {"model_name": self.model_name, "num_classes": self.num_classes, "head": self.head,
                "global_pool": self.global_pool, "image_size": self.image_size, "mean": list(self.mean),
                "std": list(self.std), "preprocess": dataclasses.asdict(self.preprocess),
                "class_names": list(self.class_names), "referable_grade": self.referable_grade,
                "channels_last": self.channels_last, "epoch": self.epoch, "stage": self.stage,
                "params": self.params}

    @classmethod
    def from_dict(cls, raw: Any, source: str | Path = "checkpoint") -> CheckpointMeta:
        """Check a stored meta dict and type it.

        Keys that earlier versions did not write take their old meaning (``head``: classification,
        ``global_pool``: avg, ``referable_grade`` and ``channels_last`` from the stored params).

        Raises:
            CheckpointError: naming ``source`` and the missing or bad field, or the removed option
                the checkpoint was trained with.
        """
        if not isinstance(raw, Mapping):
            raise CheckpointError(f"{source}: checkpoint meta is a {type(raw).__name__}, expected a dict")
        missing = [k for k in REQUIRED_META if k not in raw]
        if missing:
            raise CheckpointError(f"{source}: checkpoint meta lacks {missing}")
        _refuse_removed_options(raw, source)
        fields = _Fields(raw, source)
        params = fields.get("params", (Mapping,), "a dict of settings", {})
        run = {section: params.get(section) if isinstance(params.get(section), Mapping) else {}
               for section in ("train", "evaluate")}
        num_classes = fields.integer("num_classes", 2)
        meta = cls(
            model_name=fields.get("model_name", (str,), "a timm model name"),
            num_classes=num_classes,
            image_size=fields.integer("image_size", 1),
            mean=fields.numbers("mean"),
            std=fields.numbers("std", positive=True),
            preprocess=_preprocess(raw["preprocess"], source),
            class_names=tuple(fields.get("class_names", (list, tuple), "a list of names")),
            head=fields.choice("head", HEADS, "classification"),
            global_pool=fields.choice("global_pool", GLOBAL_POOLS, "avg"),
            referable_grade=fields.integer("referable_grade", 1, run["evaluate"].get("referable_grade", 2)),
            channels_last=fields.get("channels_last", (bool,), "true or false",
                                     run["train"].get("channels_last", False)),
            epoch=fields.get("epoch", (int, type(None)), "an integer or None"),
            stage=fields.get("stage", (int, type(None)), "an integer or None"),
            params=dict(params),
        )
        if len(meta.mean) != len(meta.std):
            raise CheckpointError(f"{source}: checkpoint meta has {len(meta.mean)} means but {len(meta.std)} stds")
        if len(meta.class_names) != num_classes or not all(isinstance(n, str) for n in meta.class_names):
            raise CheckpointError(f"{source}: checkpoint meta field 'class_names' must be {num_classes} names "
                                  f"(num_classes), got {list(meta.class_names)!r}; the meta contradicts itself: "
                                  "re-save the checkpoint with one name per class, or retrain")
        if meta.referable_grade >= num_classes:
            raise CheckpointError(f"{source}: checkpoint meta field 'referable_grade' must be below num_classes "
                                  f"({num_classes}), got {meta.referable_grade}")
        return meta


def _refuse_removed_options(raw: Mapping[str, Any], source: str | Path) -> None:
    """Options of earlier versions that change the network, removed for lack of a measured gain: this
    version cannot rebuild such a model."""
    used = [option for option, on in (("model.head_norm=true", bool(raw.get("head_norm"))),
                                      ("model.global_pool=catavgmax", raw.get("global_pool") == "catavgmax")) if on]
    if used:
        raise CheckpointError(f"{source}: trained with {' and '.join(used)}, which this version no longer has "
                              "(removed: no measured gain); retrain with this version to use it")


class _Fields:
    """Typed reads of a stored meta dict; errors name the file and the field."""

    def __init__(self, raw: Mapping[str, Any], source: str | Path) -> None:
        self.raw, self.source = raw, source

    def bad(self, key: str, expected: str, value: Any) -> CheckpointError:
        return CheckpointError(f"{self.source}: checkpoint meta field {key!r} must be {expected}, got {value!r}")

    def get(self, key: str, types: tuple[type, ...], expected: str, default: Any = None) -> Any:
        value = self.raw.get(key, default)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):  # True is an int too
            raise self.bad(key, expected, value)
        return value

    def integer(self, key: str, minimum: int, default: Any = None) -> int:
        value = self.get(key, (int,), f"an integer >= {minimum}", default)
        if value < minimum:
            raise self.bad(key, f"an integer >= {minimum}", value)
        return value

    def numbers(self, key: str, positive: bool = False) -> tuple[float, ...]:
        value = self.raw[key]
        ok = isinstance(value, (list, tuple)) and len(value) > 0 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and (v > 0 or not positive) for v in value)
        if not ok:
            raise self.bad(key, "a non-empty list of " + ("positive numbers" if positive else "numbers"), value)
        return tuple(float(v) for v in value)

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.raw.get(key, default)
        if value not in choices:
            raise self.bad(key, f"one of {list(choices)}", value)
        return value


def _preprocess(raw: Any, source: str | Path) -> PreprocessConfig:
    """The stored preprocessing settings; settings added since take their defaults."""
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{source}: checkpoint meta field 'preprocess' must be a dict, got {raw!r}")
    try:
        cfg = params_from_dict({"preprocess": dict(raw)}, validate=False).preprocess
        cfg.validate()
    except ConfigError as err:
        raise CheckpointError(f"{source}: checkpoint preprocessing settings do not fit this version of dr_core "
                              f"({err}); retrain, or use the dr_core version that wrote it") from err
    return cfg


def save_checkpoint(path: str | Path, model: nn.Module, meta: CheckpointMeta,
                    train_state: dict[str, Any] | None = None) -> None:
    """Write ``{"format", "meta", "model", "train_state"}`` to ``path`` atomically (``meta`` as a dict).

    Raises:
        CheckpointError: ``meta`` is inconsistent (class names, referable grade, ...), so that no
            checkpoint is written that :func:`load_checkpoint` would refuse.
    """
    path = Path(path)
    CheckpointMeta.from_dict(meta.to_dict(), path)  # the checks a reader makes, before anything is written
    path.parent.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    payload = {"format": FORMAT_VERSION, "meta": meta.to_dict(),
               "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "train_state": train_state or {}}
    write_atomic(path, functools.partial(_save_synced, payload))


def _save_synced(payload: dict[str, Any], path: Path) -> None:
    with path.open("wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())  # on disk before the rename: a crash leaves the old file or the new one


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load the raw payload safely (``weights_only=True``): ``meta`` (a dict, typed by
    :meth:`CheckpointMeta.from_dict`), ``model`` (the state dict) and ``train_state``."""
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
    return payload


def read_meta(path: str | Path) -> CheckpointMeta:
    """The checkpoint's :class:`CheckpointMeta`, without building its model."""
    return CheckpointMeta.from_dict(read_checkpoint(path)["meta"], path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    num_classes: int | None = None) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model a checkpoint describes, in eval mode, and return it with its meta.

    Args:
        path: a file written by :func:`save_checkpoint`.
        map_location: device for the tensors.
        num_classes: if given, the checkpoint must predict this many classes.
    """
    payload = read_checkpoint(path, map_location)
    meta = CheckpointMeta.from_dict(payload["meta"], path)
    if num_classes is not None and meta.num_classes != num_classes:
        raise CheckpointError(f"{path}: the model predicts {meta.num_classes} classes, "
                              f"but {num_classes} are expected (model.num_classes)")
    if not timm.is_model(meta.model_name):
        raise CheckpointError(f"{path}: architecture {meta.model_name!r} is unknown to this timm "
                              f"version ({timm.__version__})")
    from dr_core.models.backbone import create_timm

    model = create_timm(meta.model_name, pretrained=False, global_pool=meta.global_pool,
                        num_classes=num_outputs(meta.head, meta.num_classes))
    _check_weights_fit(model, payload["model"], meta, path)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:  # anything the checks above did not foresee
        raise CheckpointError(f"{path}: the weights do not fit model.name={meta.model_name} ({err}); "
                              "retrain, or pass the checkpoint this model was trained as") from err
    return model.eval(), meta


def _check_weights_fit(model: nn.Module, weights: Mapping[str, Any], meta: CheckpointMeta, path: str | Path) -> None:
    """Raise a :class:`CheckpointError` with the fix when ``weights`` cannot load into ``model`` (the
    network ``meta`` describes): another architecture, or a head of another size than the meta's classes."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    resized = [k for k in own if k in weights and hasattr(weights[k], "shape")
               and tuple(weights[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or resized):
        return
    head = {f"{name}.{key}" for name, module in model.named_modules()
            if module is model.get_classifier() for key in module.state_dict()}
    if not missing and not unexpected and set(resized) <= head:
        stored = min(int(weights[k].shape[0]) for k in resized)
        wanted = num_outputs(meta.head, meta.num_classes)
        raise CheckpointError(
            f"{path}: the weights' classifier has {stored} output(s), but the meta describes {meta.num_classes} "
            f"classes ({meta.head} head: {wanted} output(s); class_names {list(meta.class_names)}). The meta "
            "does not describe these weights: re-save the checkpoint with the num_classes, head and class_names "
            "it was trained with, or retrain")
    parts = [f"{len(keys)} {what} (e.g. {keys[:3]})" for what, keys in
             (("missing", missing), ("unexpected", unexpected), ("of another shape", resized)) if keys]
    raise CheckpointError(
        f"{path}: the weights do not fit model.name={meta.model_name} (global_pool {meta.global_pool}): "
        f"{', '.join(parts)} parameter(s). Was this checkpoint trained with another model? Retrain, or pass "
        "the checkpoint trained as this model")
