"""``python -m dr_core.cli.presets``: a preset file (params.yaml overrides) as ``dvc exp run -S`` arguments.

    python -m dr_core.cli.presets presets/real-cpu.yaml            # -S 'train.loss=regression' ...
    python -m dr_core.cli.presets presets/real-cpu.yaml --absolute  # data paths made absolute (queued runs)
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from dr_core.config import ConfigError
from dr_core.config.presets import merged, read_preset, to_set_args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dr_core.cli.presets",
                                     description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("preset", type=Path)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--absolute", action="store_true", help="make data paths absolute")
    args = parser.parse_args(argv)
    try:
        overrides = read_preset(args.preset)
        merged(args.params, overrides)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {args.preset}: {err}", file=sys.stderr)
        return 2
    print(" ".join(shlex.quote(a) for a in to_set_args(overrides, args.absolute)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
