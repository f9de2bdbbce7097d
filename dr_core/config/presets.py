"""Named presets: a YAML file of params.yaml overrides, turned into ``dvc exp run -S`` arguments.

    python -m dr_core.cli.presets presets/real-cpu.yaml            # -S 'train.loss=regression' ...
    python -m dr_core.cli.presets presets/real-cpu.yaml --absolute  # data paths made absolute (queued runs)

Overrides are checked against :class:`dr_core.config.params.Params` first, so a typo in a preset fails
before DVC starts. A preset's ``data.sources`` (or ``evaluate.external``) replaces params.yaml's as a whole:
``-S data.sources=null`` then one ``-S +data.sources.<name>.<key>=...`` per setting (no character that a
shell would need quoted, for ``$(...)`` in the Makefile).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from dr_core.config import ConfigError, load_params, params_from_dict

MAPPINGS = ("data.sources", "evaluate.external")  # named folders: a preset replaces them whole
PATH_FIELDS = ("labels_csv", "img_dir")  # the path settings of each folder of MAPPINGS


def flatten(tree: Mapping[str, Any], prefix: str = "", keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """``{"train": {"loss": "focal"}}`` -> ``{"train.loss": "focal"}``; the keys in ``keep`` stay mappings."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and name not in keep:
            out.update(flatten(value, name, keep))
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
    flat = flatten(raw, keep=MAPPINGS)
    for key in MAPPINGS:
        if key in flat and not isinstance(flat[key], Mapping) or flat.get(key, True) == {}:
            raise ConfigError(f"{path}: {key} replaces params.yaml's as a whole, so it must name at least one "
                              "folder ({name: {labels_csv: ..., img_dir: ...}}); leave it out to keep params.yaml's")
    return flat


def merged(base: str | Path, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """params.yaml with ``overrides`` applied, validated (raises ConfigError naming the key)."""
    params = load_params(base).to_dict()
    flat = flatten(params, keep=MAPPINGS)
    flat.update(overrides)
    params_from_dict(unflatten(flat))
    return flat


def to_set_args(overrides: Mapping[str, Any], absolute: bool = False, root: Path | None = None) -> list[str]:
    """``["-S", "key=value", ...]``; with ``absolute``, data paths are resolved against ``root``
    (queued experiments run in temporary copies of the repository, where relative paths to data
    outside it would not resolve). A mapping of :data:`MAPPINGS` replaces params.yaml's: ``key=null``
    empties it, ``+key.<name>.<setting>=value`` adds each setting."""
    args = []
    for key, value in overrides.items():
        if key in MAPPINGS:
            args += ["-S", f"{key}=null"]
            for name, settings in (value or {}).items():
                for field, setting in settings.items():
                    if absolute and field in PATH_FIELDS:
                        setting = str(((root or Path.cwd()) / str(setting)).resolve())
                    args += ["-S", f"+{key}.{name}.{field}={setting}"]
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        args += ["-S", f"{key}={value}"]
    return args
