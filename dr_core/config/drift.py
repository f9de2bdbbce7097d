"""Settings changed under a running stage: params.yaml read again and compared with what the stage began with.

Two ``dvc exp run`` in one workspace (or one left running by a killed ``dvc``) share params.yaml: the later
one's ``-S`` values land in the file while the first still trains, and DVC would record the first run's
outputs under the second's settings. A stage that checks before writing stops instead.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from dr_core.config.params import ConfigError, load_params

MAX_LISTED = 5


class ParamsChangedError(ConfigError):
    """params.yaml no longer holds the settings a running stage started with."""


def changed_settings(started: Mapping[str, Any], now: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``["train.loss: 'ce' -> 'focal'", ...]``: every setting whose value differs between two nested dicts."""
    out = []
    for key in sorted(set(started) | set(now), key=str):
        name = f"{prefix}{key}"
        a, b = started.get(key, "<absent>"), now.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += changed_settings(a, b, f"{name}.")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


def check_params_unchanged(path: Path, declared: Sequence[str], stage: str, started: Mapping[str, Any]) -> None:
    """Raise :class:`ParamsChangedError` if the settings ``stage`` declares (its ``PARAMS``) now differ in
    ``path`` from ``started`` (``Params.only(declared, stage).to_dict()`` when it began).

    Settings the stage does not declare may change freely: DVC does not tie them to its outputs.
    """
    fix = ("so it stops without writing its outputs, which would not match params.yaml. Run it again; for "
           "experiments side by side use `dvc exp run --queue` (each runs in its own copy of the workspace)")
    try:
        now = load_params(path).only(declared, stage).to_dict()
    except (ConfigError, OSError, yaml.YAMLError) as err:
        raise ParamsChangedError(f"{path} changed while the {stage} stage ran and no longer loads ({err}), "
                                 f"{fix}") from None
    changes = changed_settings(started, now)
    if changes:
        more = f" and {len(changes) - MAX_LISTED} more" if len(changes) > MAX_LISTED else ""
        raise ParamsChangedError(
            f"{path} changed while the {stage} stage ran (another `dvc exp run` in this workspace?): "
            f"{'; '.join(changes[:MAX_LISTED])}{more}. The stage read its settings when it started, {fix}")
