"""Typed, validated settings loaded from ``params.yaml``.

Every section of ``params.yaml`` becomes a frozen dataclass. Unknown keys and
out-of-range values fail before any work starts, with a message that names the
key and lists the valid choices (``train.los`` -> "did you mean 'loss'?").
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, get_args, get_origin, get_type_hints

import yaml

LOSSES = ("ce", "weighted_ce", "focal", "regression", "ordinal")
AUGMENTS = ("none", "basic", "advanced")
AMP_MODES = ("auto", "fp16", "bf16")
FREEZE_STRIDES = (0, 2, 4, 8, 16)
GLOBAL_POOLS = ("avg", "max", "avgmax", "gem")  # timm's global pooling before the head, or GeM
FELLOW_EYE_SCOPES = ("referable", "all")  # what fellow-eye blending decides (dr_core/evaluation/eyes.py)
BAD_IMAGE_POLICIES = ("error", "skip")
PATIENT_SOURCES = ("auto", "eyepacs", "none")  # or the name of a CSV column
DEVICES = ("auto", "cpu", "cuda")
MONITORS = ("val/qwk", "val/auc", "val/acc", "val/loss", "val/f1_macro", "last")  # last: the final epoch, no selection
GRADE_NAMES = ("No DR", "Mild", "Moderate", "Severe", "Proliferative")
# A source or external set name is a folder name (data/sources/<name>), part of a DVC stage name
# (sources@<name>), a dotted params key (data.sources.<name>) and a word in a stage command: no dots,
# slashes, spaces or shell characters.
SOURCE_NAME = r"[A-Za-z0-9][A-Za-z0-9_-]*"
# Keys of a metrics.json block (test, val, external): a source named like one would overwrite it, since
# each source's figures sit beside them (test.<source>.qwk). tests/test_by_source.py keeps this complete.
METRIC_KEYS = frozenset({
    "n_images", "n_patients", "qwk", "qwk_argmax", "accuracy", "balanced_accuracy", "f1_macro", "auc_macro",
    "ece", "brier", "log_loss", "referable_grade", "referable_prevalence", "referable_auc", "referable_threshold",
    "referable_sensitivity", "referable_specificity", "referable_ppv", "referable_npv", "referable_tp",
    "referable_fp", "referable_tn", "referable_fn", "bootstrap_resamples", "ci_level", "per_class",
    "val_referable_sensitivity", "val_referable_specificity", "val_referable_auc", "val_qwk",
    *(f"{m}_ci_{end}" for m in ("qwk", "referable_auc", "referable_sensitivity", "referable_specificity")
      for end in ("low", "high", "skipped"))})


class InputError(Exception):
    """Input the user can fix (a setting, a photo, a labels file, a checkpoint): its message names what is
    wrong and how to fix it, so entry points print it as one line rather than a traceback."""


class ConfigError(InputError, ValueError):
    """A setting in params.yaml is unknown or out of range."""


@dataclass(frozen=True)
class DemoConfig:
    """Synthetic fundus photographs written in the APTOS layout."""

    n_patients: int = 300
    image_size: int = 384

    def validate(self) -> None:
        _check(self.n_patients >= 5, "demo.n_patients", self.n_patients, "an integer >= 5")
        _check(self.image_size >= 32, "demo.image_size", self.image_size, "an integer >= 32")


@dataclass(frozen=True)
class SourceConfig:
    """One labelled folder: a source of ``data.sources`` or an external set of ``evaluate.external``.

    ``id_col``, ``label_col`` and ``patient`` left empty take the ``data.`` level's value.
    """

    labels_csv: str = ""  # (guide: --labels-csv) APTOS or EyePACS layout, anywhere on disk
    img_dir: str = ""  # (guide: --img-dir) the folder of the photographs the CSV names
    id_col: str = ""
    label_col: str = ""
    patient: str = ""

    def check(self, section: str, name: str) -> None:
        """Range checks of the folder ``name`` of ``section`` (``data.sources``)."""
        key = f"{section}.{name}"
        if not re.fullmatch(SOURCE_NAME, name):
            raise ConfigError(f"{key}: the name {name!r} must be letters, digits, '_' and '-' (it names a folder, "
                              "a DVC stage and a params key), e.g. 'eyepacs' or 'odir-2019'")
        if name in METRIC_KEYS:
            raise ConfigError(f"{key}: {name!r} is the name of a metric in metrics.json, where each source's "
                              "figures sit beside the overall ones; rename the source")
        for field_name in ("labels_csv", "img_dir"):
            if not getattr(self, field_name):
                raise ConfigError(f"{key}.{field_name}: missing; every source needs labels_csv (its labels CSV) "
                                  "and img_dir (its folder of photographs)")

    def resolved(self, data: Any) -> DataConfig:
        """The settings this folder is read with: its own ``id_col``, ``label_col`` and ``patient`` where
        set, else those of ``data`` (a :class:`DataConfig`), and ``data``'s bad-image policy."""
        return DataConfig(sources={}, id_col=self.id_col or data.id_col, label_col=self.label_col or data.label_col,
                          patient=self.patient or data.patient, on_bad_image=data.on_bad_image,
                          max_bad_fraction=data.max_bad_fraction)

    def location(self) -> tuple[str, str]:
        """The labels CSV and image folder as absolute, symlink-free paths: two sources alike here are one."""
        return os.path.realpath(self.labels_csv), os.path.realpath(self.img_dir)


DEMO_SOURCE = SourceConfig(labels_csv="data/demo/train.csv", img_dir="data/demo/train_images")


@dataclass(frozen=True)
class DataConfig:
    """Where the labelled photographs are and how to read them.

    ``sources`` maps a name to a labelled folder (:class:`SourceConfig`); each one is validated by its own
    ``sources@<name>`` stage, and the split stage merges them. The other keys apply to every source that
    does not set its own.
    """

    sources: dict[str, SourceConfig] = field(default_factory=lambda: {"demo": DEMO_SOURCE})
    id_col: str = "auto"  # auto: id_code (APTOS) or image (EyePACS)
    label_col: str = "auto"  # auto: diagnosis (APTOS) or level (EyePACS)
    patient: str = "auto"  # auto | eyepacs | none | <column name>
    on_bad_image: str = "skip"  # skipped images are reported, counted and capped
    max_bad_fraction: float = 0.05
    dedup_max_distance: int = 8  # perceptual-hash Hamming distance; -1 disables

    def validate(self) -> None:
        _choice("data.on_bad_image", self.on_bad_image, BAD_IMAGE_POLICIES)
        _check(0.0 <= self.max_bad_fraction <= 1.0, "data.max_bad_fraction",
               self.max_bad_fraction, "a fraction in [0, 1]")
        _check(-1 <= self.dedup_max_distance <= 64, "data.dedup_max_distance",
               self.dedup_max_distance, "-1 (off) or 0..64")
        if not self.sources:
            raise ConfigError("data.sources: empty; name at least one labelled folder, e.g. "
                              "data.sources: {demo: {labels_csv: data/demo/train.csv, img_dir: data/demo/train_images}}")
        check_folders(self.sources, "data.sources")


def check_folders(folders: Mapping[str, SourceConfig], key: str) -> None:
    """Each folder's own checks, and no two that read the same labels CSV and image folder."""
    seen: dict[tuple[str, str], str] = {}
    for name, folder in folders.items():
        folder.check(key, name)
        first = seen.setdefault(folder.location(), name)
        if first != name:
            raise ConfigError(f"{key}: {first!r} and {name!r} both read {folder.labels_csv} with the photographs "
                              f"in {folder.img_dir}; every photograph would count twice. Remove one of them")


@dataclass(frozen=True)
class SplitConfig:
    """Patient-grouped, grade-stratified split (guide: --val-split).

    With ``folds`` >= 2 the patient groups are cut into that many stratified folds (fixed by the
    seed) and fold ``fold`` is the test split, in place of a ``test`` fraction: running every
    ``fold`` from 0 to ``folds - 1`` tests each photograph exactly once (cross-validation). Val is
    then drawn from the other folds, still ``val`` of all photographs.

    ``train_fraction`` below 1 trains on that stratified share of the training patient groups only,
    with val and test unchanged: the points of a learning curve (how much would more photos help?).
    """

    val: float = 0.2
    test: float = 0.2
    folds: int = 0  # 0: one held-out test fraction; K >= 2: test is fold `fold` of K
    fold: int = 0
    train_fraction: float = 1.0  # < 1: train on this share of the training patients (a learning curve)

    @property
    def test_fraction(self) -> float:
        return 1.0 / self.folds if self.folds else self.test

    def validate(self) -> None:
        _check(0.0 < self.val < 1.0, "split.val", self.val, "a fraction in (0, 1)")
        _check(0.0 < self.test < 1.0, "split.test", self.test, "a fraction in (0, 1)")
        _check(self.folds == 0 or self.folds >= 2, "split.folds", self.folds,
               "0 (a held-out test fraction) or a number of folds >= 2")
        _check(0 <= self.fold < max(self.folds, 1), "split.fold", self.fold,
               f"a fold in 0..{self.folds - 1} (split.folds is {self.folds})" if self.folds
               else "0 while split.folds is 0 (set split.folds to cross-validate)")
        _check(0.0 < self.train_fraction <= 1.0, "split.train_fraction", self.train_fraction,
               "a fraction in (0, 1]; 1 trains on every training photograph")
        what = "split.val + 1 / split.folds" if self.folds else "split.val + split.test"
        _check(self.val + self.test_fraction < 0.9, what, self.val + self.test_fraction,
               "below 0.9, so that something is left to train on")


@dataclass(frozen=True)
class CVConfig:
    """The cross-validation pipeline (``cv/dvc.yaml``): split, preprocess, train and evaluate once per
    fold, then pool the folds' test predictions.

    ``folds`` lists the folds as 0..K-1 because DVC's ``matrix`` iterates over a list and cannot count.
    Fold k runs with ``split.folds: K`` and ``split.fold: k`` (:func:`fold_params`).
    """

    folds: tuple[int, ...] = (0, 1, 2, 3, 4)

    def validate(self) -> None:
        _check(len(self.folds) >= 2 and list(self.folds) == list(range(len(self.folds))), "cv.folds",
               list(self.folds), "the fold numbers 0..K-1 of K >= 2 folds, e.g. [0, 1, 2, 3, 4] for five folds")


@dataclass(frozen=True)
class PreprocessConfig:
    """Deterministic image work cached on disk (guide: --medical-preprocess)."""

    medical: bool = True  # border crop + CLAHE
    clahe: bool = True  # with medical: false keeps the crop and skips CLAHE
    clahe_clip: float = 2.0
    clahe_grid: int = 8
    ben_graham: bool = False
    ben_sigma: float = 0.03  # Gaussian sigma as a fraction of the cached size
    circular_mask: bool = False
    keep_aspect: bool = True  # pad to a square instead of stretching
    cache_size: int = 256
    workers: int = 0  # 0: all cores

    def validate(self) -> None:
        _check(self.clahe_clip > 0, "preprocess.clahe_clip", self.clahe_clip, "a number > 0")
        _check(self.clahe_grid >= 1, "preprocess.clahe_grid", self.clahe_grid, "an integer >= 1")
        _check(0 < self.ben_sigma < 0.5, "preprocess.ben_sigma", self.ben_sigma, "a fraction in (0, 0.5)")
        _check(self.cache_size >= 16, "preprocess.cache_size", self.cache_size, "an integer >= 16")
        _check(self.workers >= 0, "preprocess.workers", self.workers, "0 (all cores) or a positive integer")


@dataclass(frozen=True)
class ModelConfig:
    """Any timm model (guide: --model-name, --num-classes, --pretrained)."""

    name: str = "tf_efficientnet_lite0"
    num_classes: int = 5
    pretrained: bool = True
    pretrained_file: str = ""  # "" | path to .pth/.safetensors | "builtin"
    drop_rate: float = 0.2
    drop_path_rate: float = 0.1
    global_pool: str = "avg"  # avg | max | avgmax (timm's pooling of the last feature map) | gem

    def validate(self) -> None:
        import timm

        if not timm.is_model(self.name):
            close = difflib.get_close_matches(self.name, timm.list_models(), n=5, cutoff=0.6)
            hint = f" Did you mean one of {close}?" if close else " See timm.list_models()."
            raise ConfigError(f"model.name: timm does not know {self.name!r}.{hint}")
        _check(self.num_classes >= 2, "model.num_classes", self.num_classes, "an integer >= 2")
        _check(0.0 <= self.drop_rate < 1.0, "model.drop_rate", self.drop_rate, "a fraction in [0, 1)")
        _check(0.0 <= self.drop_path_rate < 1.0, "model.drop_path_rate", self.drop_path_rate,
               "a fraction in [0, 1)")
        _choice("model.global_pool", self.global_pool, GLOBAL_POOLS)


@dataclass(frozen=True)
class TrainConfig:
    """Two-stage training (guide: --two-stage, --epochs-stage1/2, --lr-stage1/2, ...)."""

    image_size: int = 224
    two_stage: bool = True
    epochs_stage1: int = 2
    epochs_stage2: int = 4
    lr_stage1: float = 1e-3
    lr_stage2: float = 3e-4
    backbone_lr_mult: float = 1.0
    freeze_stride: int = 0  # stage 2 keeps layers at output stride <= this frozen (0: train all)
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    min_lr_ratio: float = 0.01
    loss: str = "weighted_ce"  # ce | weighted_ce | focal: classification; regression; ordinal
    regression_loss: str = "smooth_l1"  # smooth_l1 | mse (train.loss=regression)
    focal_gamma: float = 2.0
    focal_alpha: bool = False  # focal alpha = class weights
    label_smoothing: float = 0.0
    advanced_aug: bool = True
    aug_strength: float = 1.0  # multiplies the augmentation ranges and probabilities (dr_core.data.augment)
    augment_on: str = "workers"  # workers: albumentations per photo in the loader | device: batched (dr_core.data.batch_augment)
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) blend of training images and losses (dr_core.training.mixup); 0: off
    mixed_precision: bool = True  # used on CUDA; on CPU only with amp_dtype=bf16
    amp_dtype: str = "auto"
    channels_last: bool = False
    batch_size: int = 32
    grad_accum: int = 1
    grad_clip: float = 1.0
    num_workers: int = 2
    patience: int = 10
    save_freq: int = 5
    monitor: str = "val/qwk"
    ema: bool = False
    ema_decay: float = 0.999
    balanced_sampler: bool = False
    device: str = "auto"
    deterministic: bool = True
    nproc_per_node: int = 1  # >1: torchrun --standalone, one process per GPU (gloo on CPU)
    sync_bn: bool = False
    lr_scaling: str = "linear"  # linear: LR x world size (the per-process batch stays batch_size)
    sources: tuple[str, ...] = ()  # train and val on these data.sources only (same split); empty: all

    def validate(self) -> None:
        for i, name in enumerate(self.sources):
            _check(re.fullmatch(SOURCE_NAME, name) is not None, f"train.sources[{i}]", name,
                   "the name of one of data.sources")
        _check(len(set(self.sources)) == len(self.sources), "train.sources", list(self.sources),
               "each source once")
        _choice("train.loss", self.loss, LOSSES)
        _choice("train.augment_on", self.augment_on, ("workers", "device"))
        _choice("train.regression_loss", self.regression_loss, ("smooth_l1", "mse"))
        _choice("train.amp_dtype", self.amp_dtype, AMP_MODES)
        _choice("train.monitor", self.monitor, MONITORS)
        _choice("train.device", self.device, DEVICES)
        _choice("train.lr_scaling", self.lr_scaling, ("linear", "none"))
        _check(self.nproc_per_node >= 1, "train.nproc_per_node", self.nproc_per_node, "an integer >= 1")
        if self.balanced_sampler and self.nproc_per_node > 1:
            raise ConfigError("train.balanced_sampler is not supported with train.nproc_per_node > 1")
        for key in ("lr_stage1", "lr_stage2"):
            _check(getattr(self, key) > 0, f"train.{key}", getattr(self, key), "a number > 0")
        for key in ("epochs_stage1", "epochs_stage2", "save_freq", "patience"):
            _check(getattr(self, key) >= 0, f"train.{key}", getattr(self, key), "an integer >= 0")
        _check(self.epochs_stage1 + self.epochs_stage2 > 0, "train.epochs_stage1 + train.epochs_stage2",
               self.epochs_stage1 + self.epochs_stage2, "at least 1 epoch in all")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "a number >= 0")
        _check(self.focal_gamma >= 0, "train.focal_gamma", self.focal_gamma, "a number >= 0")
        _check(0.0 <= self.label_smoothing < 1.0, "train.label_smoothing", self.label_smoothing,
               "a fraction in [0, 1)")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "an integer >= 1")
        _check(self.grad_accum >= 1, "train.grad_accum", self.grad_accum, "an integer >= 1")
        _check(self.grad_clip >= 0, "train.grad_clip", self.grad_clip, "0 (off) or a number > 0")
        _check(self.num_workers >= 0, "train.num_workers", self.num_workers, "an integer >= 0")
        _check(self.image_size >= 16, "train.image_size", self.image_size, "an integer >= 16")
        _check(self.freeze_stride in FREEZE_STRIDES, "train.freeze_stride", self.freeze_stride,
               f"one of {', '.join(map(str, FREEZE_STRIDES))}")
        _check(self.backbone_lr_mult > 0, "train.backbone_lr_mult", self.backbone_lr_mult, "a number > 0")
        _check(self.warmup_epochs >= 0, "train.warmup_epochs", self.warmup_epochs, "a number >= 0")
        _check(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", self.min_lr_ratio, "a fraction in [0, 1]")
        _check(self.aug_strength > 0, "train.aug_strength", self.aug_strength, "a number > 0")
        _check(self.mixup_alpha >= 0, "train.mixup_alpha", self.mixup_alpha, "0 (off) or a number > 0")
        _check(0 < self.ema_decay < 1, "train.ema_decay", self.ema_decay, "a fraction in (0, 1)")


@dataclass(frozen=True)
class EvaluateConfig:
    """Test-split evaluation and the referable-DR operating point."""

    referable_grade: int = 2  # grade >= this is referable (moderate or worse)
    operating_point: str = "sensitivity"  # sensitivity | sensitivity_each_source | youden
    target_sensitivity: float = 0.87
    bootstrap: int = 1000
    tta: bool = False
    batch_size: int = 64
    grade_rule: str = "argmax"  # argmax | qwk: cut-points on the expected grade tuned on val for QWK
    fellow_eye_weight: float = 0.0  # blend each photo's probabilities with the patient's other eye
    fellow_eye_scope: str = "referable"  # referable: the blend sets the referable score only | all: grades too
    external: dict[str, SourceConfig] = field(default_factory=dict)  # held-out labelled folders, the `external` stage

    def validate(self) -> None:
        check_folders(self.external, "evaluate.external")
        _choice("evaluate.grade_rule", self.grade_rule, ("argmax", "qwk"))
        _choice("evaluate.fellow_eye_scope", self.fellow_eye_scope, FELLOW_EYE_SCOPES)
        _check(0.0 <= self.fellow_eye_weight < 1.0, "evaluate.fellow_eye_weight", self.fellow_eye_weight,
               "a fraction in [0, 1)")
        _choice("evaluate.operating_point", self.operating_point, ("sensitivity", "sensitivity_each_source", "youden"))
        _check(0 < self.target_sensitivity <= 1, "evaluate.target_sensitivity",
               self.target_sensitivity, "a fraction in (0, 1]")
        _check(self.bootstrap >= 0, "evaluate.bootstrap", self.bootstrap, "0 (off) or a positive integer")
        _check(self.referable_grade >= 1, "evaluate.referable_grade", self.referable_grade, "an integer >= 1")
        _check(self.batch_size >= 1, "evaluate.batch_size", self.batch_size, "an integer >= 1")


@dataclass(frozen=True)
class ExportConfig:
    """The export stage: ONNX model, its check against PyTorch, and the model card."""

    opset: int = 17  # ONNX opset of the exported graph
    atol: float = 1e-4  # largest difference in grade probabilities allowed between onnxruntime and PyTorch

    def validate(self) -> None:
        _check(11 <= self.opset <= 21, "export.opset", self.opset, "an ONNX opset between 11 and 21")
        _check(0 < self.atol < 1, "export.atol", self.atol, "a tolerance in (0, 1), e.g. 1e-4")


@dataclass(frozen=True)
class Params:
    """All of params.yaml."""

    seed: int = 42
    demo: DemoConfig = field(default_factory=DemoConfig)
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.validate()
        if self.train.image_size > self.preprocess.cache_size:
            raise ConfigError(
                f"train.image_size: got {self.train.image_size}, larger than preprocess.cache_size "
                f"({self.preprocess.cache_size}): the cached photos would be upsampled. Raise "
                "preprocess.cache_size (the preprocess stage reruns) or lower train.image_size")
        sources = {folder.location(): name for name, folder in self.data.sources.items()}
        for name, folder in self.evaluate.external.items():
            if folder.location() in sources:
                raise ConfigError(
                    f"evaluate.external.{name}: reads the same labels CSV and photographs as data.sources."
                    f"{sources[folder.location()]}, which the model was developed on; an external test set must be "
                    "other photographs")
        if self.evaluate.referable_grade >= self.model.num_classes:
            raise ConfigError(
                f"evaluate.referable_grade: got {self.evaluate.referable_grade}, but model.num_classes "
                f"is {self.model.num_classes}; it must be below num_classes")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def only(self, declared: Sequence[str], stage: str) -> StageParams:
        """The settings a stage declares (its ``params:`` in dvc.yaml); reading any other one fails."""
        return StageParams(self, declared, stage)


class UndeclaredParamError(ConfigError):
    """A stage read a setting missing from its ``params:`` in dvc.yaml, so DVC would not rerun it on a change."""


def _undeclared(stage: str, key: str) -> UndeclaredParamError:
    return UndeclaredParamError(
        f"stage {stage!r} read {key!r}, which its entry in dvc.yaml does not list under params: DVC would not "
        f"rerun the stage when it changes. Add {key!r} to the stage's params in dvc.yaml and to PARAMS in "
        f"stages/{stage}.py")


class _PartialMapping(Mapping):
    """A mapping setting of which a stage declared some entries only (``data.sources.odir``)."""

    def __init__(self, name: str, mapping: Mapping[str, Any], keys: frozenset[str], stage: str) -> None:
        self._name, self._mapping, self._keys, self._stage = name, mapping, keys, stage

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys and key in self._mapping:
            raise _undeclared(self._stage, f"{self._name}.{key}")
        return self._mapping[key]

    def __iter__(self) -> Iterator[str]:
        return (key for key in self._mapping if key in self._keys)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _PartialSection:
    """A section of which a stage declared only some keys (``model.num_classes``), or some entries of a
    mapping key (``data.sources.odir``: ``keys["sources"]`` holds the entries, None: the whole key)."""

    def __init__(self, name: str, section: Any, keys: Mapping[str, frozenset[str] | None], stage: str) -> None:
        self._name, self._section, self._keys, self._stage = name, section, keys, stage

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        if key not in self._keys:
            raise _undeclared(self._stage, f"{self._name}.{key}")
        value = getattr(self._section, key)
        entries = self._keys[key]
        return value if entries is None else _PartialMapping(f"{self._name}.{key}", value, entries, self._stage)

    def validate(self) -> None:
        """Range checks of the whole section: they only refuse bad values, the output depends on none of them."""
        self._section.validate()

    def to_dict(self) -> dict[str, Any]:
        full = dataclasses.asdict(self._section)
        return {key: full[key] if entries is None else {e: full[key][e] for e in sorted(entries)}
                for key, entries in sorted(self._keys.items())}


class StageParams:
    """:class:`Params` as one stage may see them: the sections and keys it declared, nothing else.

    Each stage lists what it reads in ``PARAMS``; tests/test_dvc_deps.py checks that the list equals the
    stage's ``params:`` in dvc.yaml, and any read outside it raises :class:`UndeclaredParamError`, so a
    setting that changes a stage's output can never be missing from what DVC watches. A declared entry has
    one, two or three parts: ``data``, ``data.id_col``, ``data.sources.odir`` (one entry of a mapping).
    """

    def __init__(self, params: Params, declared: Sequence[str], stage: str) -> None:
        names = {f.name for f in fields(Params)}
        whole: set[str] = set()
        partial: dict[str, dict[str, set[str] | None]] = {}
        for entry in declared:
            section, key, item = (entry.split(".", 2) + ["", ""])[:3]
            if section not in names:
                raise ConfigError(f"stage {stage!r} declares {entry!r}, not a params.yaml section: {sorted(names)}")
            if not key:
                whole.add(section)
                continue
            value = getattr(getattr(params, section), key)  # an unknown key fails here, not at first use
            keys = partial.setdefault(section, {})
            if not item:
                keys[key] = None
            elif not isinstance(value, Mapping) or item not in value:
                raise ConfigError(f"stage {stage!r} declares {entry!r}, but {section}.{key} has no entry {item!r}: "
                                  f"{sorted(value) if isinstance(value, Mapping) else value!r}")
            elif key not in keys or keys[key] is not None:
                keys.setdefault(key, set()).add(item)
        self._params, self._stage, self._whole = params, stage, frozenset(whole)
        self._partial = {s: {k: None if v is None else frozenset(v) for k, v in keys.items()}
                         for s, keys in partial.items() if s not in whole}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._whole:
            return getattr(self._params, name)
        if name in self._partial:
            return _PartialSection(name, getattr(self._params, name), self._partial[name], self._stage)
        raise _undeclared(self._stage, name)

    def to_dict(self) -> dict[str, Any]:
        """The declared settings only, as nested dicts."""
        full = self._params.to_dict()
        out: dict[str, Any] = {name: full[name] for name in sorted(self._whole)}
        for name in sorted(self._partial):
            out[name] = self.__getattr__(name).to_dict()
        return out


def fold_params(params: Params, fold: int) -> Params:
    """``params`` for fold ``fold`` of the cross-validation: ``split.folds`` = len(cv.folds), ``split.fold`` = fold."""
    split = dataclasses.replace(params.split, folds=len(params.cv.folds), fold=fold)
    try:
        split.validate()
    except ConfigError as err:
        raise ConfigError(f"cross-validation fold {fold} (split.folds = len(cv.folds) = {split.folds}): "
                          f"{err}") from None
    return dataclasses.replace(params, split=split)


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: got {value!r}, expected {expected}")


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{key}: got {value!r}, valid choices are {list(choices)}.{hint}")


def _coerce(key: str, value: Any, typ: type) -> Any:
    """Convert YAML scalars to the declared type, refusing lossy conversions."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: got {value!r}, expected true or false")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{key}: got {value!r}, expected an integer")
        return int(value)
    if typ is float:
        if isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: got {value!r}, expected a number")
        if not math.isfinite(value):  # YAML's .inf and .nan: no setting means anything with them
            raise ConfigError(f"{key}: got {value!r}, expected a finite number")
        return float(value)
    if typ == tuple[int, ...]:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: got {value!r}, expected a list of integers, e.g. [0, 1, 2]")
        return tuple(_coerce(f"{key}[{i}]", v, int) for i, v in enumerate(value))
    if typ == tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: got {value!r}, expected a list of names, e.g. [eyepacs, odir]")
        return tuple(_coerce(f"{key}[{i}]", v, str) for i, v in enumerate(value))
    if typ is str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ConfigError(f"{key}: got {value!r}, expected a string")
        return value
    raise TypeError(f"unsupported field type {typ} for {key}")


RENAMED = {"data.labels_csv": "data.sources.<name>.labels_csv", "data.img_dir": "data.sources.<name>.img_dir"}


def _build_mapping(item_cls: type, raw: Any, key: str) -> dict[str, Any]:
    """A mapping of names to settings (``data.sources``); YAML's empty value is an empty mapping."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: expected a mapping of names to settings, got {raw!r}")
    out = {}
    for name, value in raw.items():
        if not isinstance(value, Mapping):
            fields_ = [f.name for f in fields(item_cls)]
            raise ConfigError(f"{key}.{name}: expected a mapping with the keys {fields_}, got {value!r}")
        out[str(name)] = _build(item_cls, value, f"{key}.{name}")
    return out


def _build(cls: type, raw: Mapping[str, Any] | None, prefix: str) -> Any:
    raw = dict(raw or {})
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        key = unknown[0]
        if f"{prefix}.{key}" in RENAMED:
            raise ConfigError(f"{prefix}.{key} is now {RENAMED[f'{prefix}.{key}']}: the photographs come from "
                              "data.sources, a mapping of names to {labels_csv, img_dir}, e.g. data.sources: "
                              "{eyepacs: {labels_csv: ..., img_dir: ...}}")
        close = difflib.get_close_matches(key, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        where = f"{prefix}.{key}" if prefix else key
        raise ConfigError(f"unknown key {where!r}.{hint} Valid keys{' in ' + prefix if prefix else ''}: {names}")
    kwargs = {}
    for name in names:
        if name not in raw:
            continue
        typ = hints[name]
        key = f"{prefix}.{name}" if prefix else name
        if get_origin(typ) is dict:
            kwargs[name] = _build_mapping(get_args(typ)[1], raw[name], key)
        elif dataclasses.is_dataclass(typ):
            if not isinstance(raw[name], Mapping):
                raise ConfigError(f"{key}: expected a mapping of settings, got {raw[name]!r}")
            kwargs[name] = _build(typ, raw[name], key)
        else:
            kwargs[name] = _coerce(key, raw[name], typ)
    return cls(**kwargs)


def params_from_dict(raw: Mapping[str, Any], validate: bool = True) -> Params:
    """Build validated :class:`Params` from a parsed params.yaml mapping."""
    params = _build(Params, raw, "")
    if validate:
        params.validate()
    return params


def load_params(path: str | Path = "params.yaml", validate: bool = True) -> Params:
    """Read, type-check and validate ``params.yaml``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: params file not found; run from the repository root")
    with path.open() as fh:
        raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return params_from_dict(raw, validate=validate)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
