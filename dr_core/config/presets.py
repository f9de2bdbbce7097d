"""Named presets: a YAML file of params.yaml overrides, turned into ``dvc exp run -S`` arguments.

    python -m dr_core.cli.presets presets/real-cpu.yaml            # -S 'train.loss=regression' ...
    python -m dr_core.cli.presets presets/real-cpu.yaml --absolute  # data paths made absolute (queued runs)

Overrides are checked against :class:`dr_core.config.params.Params` first, so a typo in a preset fails
before DVC starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from dr_core.config import ConfigError, load_params, params_from_dict

PATH_KEYS = ("data.labels_csv", "data.img_dir")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"loss": "focal"}}`` -> ``{"train.loss": "focal"}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten`."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def read_preset(path: str | Path) -> dict[str, Any]:
    """The preset's overrides, flat (``section.key -> value``), validated against params.yaml."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such preset; see the presets/ folder")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping of params.yaml sections")
    return flatten(raw)


def merged(base: str | Path, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """params.yaml with ``overrides`` applied, validated (raises ConfigError naming the key)."""
    params = load_params(base).to_dict()
    flat = flatten(params)
    flat.update(overrides)
    params_from_dict(unflatten(flat))
    return flat


def to_set_args(overrides: Mapping[str, Any], absolute: bool = False, root: Path | None = None) -> list[str]:
    """``["-S", "key=value", ...]``; with ``absolute``, data paths are resolved against ``root``
    (queued experiments run in temporary copies of the repository, where relative paths to data
    outside it would not resolve)."""
    args = []
    for key, value in overrides.items():
        if absolute and key in PATH_KEYS:
            value = str(((root or Path.cwd()) / str(value)).resolve())
        if isinstance(value, bool):
            value = "true" if value else "false"
        args += ["-S", f"{key}={value}"]
    return args
