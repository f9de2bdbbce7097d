"""Atomic file writes: readers (and an interrupted run) never see half a file under the final name."""
from __future__ import annotations

import hashlib

import os
import tempfile
from pathlib import Path
from typing import Callable


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read the umask is to set it
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file; mkstemp's files are 0600


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a new temporary file beside ``path``, then rename it over ``path``.

    The temporary name is unique (``<name>.<random>.tmp`` in the same folder, so the rename stays on
    one file system), so processes writing the same target never share it; it is removed when
    ``write`` fails or is interrupted.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, _FILE_MODE)
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB blocks: ties an operating point or an export to its checkpoint."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
