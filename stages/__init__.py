"""Thin DVC stage entry points: each reads its paths from the command line written in dvc.yaml and its
settings (``PARAMS``) from params.yaml, and calls one dr_core function."""
from __future__ import annotations

import sys
from typing import Callable, NoReturn

from dr_core.config import ConfigError, InputError
from dr_core.runtime.lock import FolderLocked


def run(main: Callable[[], int | None]) -> NoReturn:
    """Run a stage's ``main``; a settings error (exit 2), other input the user can fix (a photo, a labels file,
    a checkpoint: exit 1) or a folder another process is writing (exit 3) is one line on stderr, not a
    traceback."""
    try:
        code = main()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        code = 1
    except FolderLocked as err:
        print(f"error: {err}", file=sys.stderr)
        code = 3
    sys.exit(code or 0)
