"""One writer per folder: an exclusive, non-blocking ``fcntl.flock`` on ``<folder>/.lock``.

The kernel drops the lock when its holder exits or is killed (``kill -9`` included), so a stale lock
file never blocks anyone; the PID written into the file only names the holder in the message.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".lock"  # in .dvcignore: never part of a DVC output


class FolderLocked(RuntimeError):
    """Another process holds the folder's lock."""


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode(errors="replace").strip()
    return text if text.isdigit() else ""


@contextlib.contextmanager
def exclusive_folder(folder: Path, what: str = "training") -> Iterator[Path]:
    """Hold ``<folder>/.lock`` while the body runs, so that no other process of ``what`` writes ``folder``.

    Raises:
        FolderLocked: at once (no waiting) when another process holds it, naming its PID and the fix.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            who = f"process {pid}" if pid else "another process (its PID not yet written)"
            stop = f"`kill {pid}`" if pid else f"the process holding {path} (`fuser {path}`)"
            raise FolderLocked(
                f"{folder}: another {what} is writing here ({who} holds {path}). Two must never write one "
                f"folder: wait for it to finish, or, if it was left running by a killed `dvc repro` or "
                f"`dvc exp run`, stop it ({stop}) and run again. For experiments side by side use "
                "`dvc exp run --queue` and `dvc queue start -j N`: each runs in its own copy of the workspace"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # the file stays: removing it would race with a process about to lock it
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
