"""Where the command lines may write: never over an input, never into a folder of someone else's files.

* :func:`refuse_input`: an output file may not be one of the inputs (a photo, the checkpoint, a labels
  CSV, an operating point), whatever the spelling of the path (``./a``, a symbolic or hard link).
* :func:`refuse_inside`: an output folder may not be an input folder, nor lie inside one.
* :func:`claim_dir`: an output folder is written only when it is new or empty, or when everything in it
  was written there by the same tool, as its manifest (``MANIFEST``, written after every run) says.
  Otherwise the run stops before any work and names the files that would be replaced; ``force`` writes
  anyway (files of the same name are replaced, others left alone).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable, Iterator, Sequence

from dr_core.runtime.io import write_atomic

MANIFEST = ".drgrade-outputs.json"
MAX_LISTED = 10


class OutputError(ValueError):
    """An output path would overwrite an input, or files that the tool did not write."""


def _identity(path: Path) -> tuple:
    """The file itself: device and inode when it exists (links and spellings agree), else the resolved path."""
    try:
        st = path.stat()
    except OSError:
        return ("path", str(path.resolve()))
    return ("inode", st.st_dev, st.st_ino)


def _listing(items: Sequence[str]) -> str:
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def refuse_input(target: Path, inputs: Sequence[tuple[str, Path]], option: str) -> None:
    """Raise :class:`OutputError` if the file ``target`` (given as ``option``) is one of ``inputs``
    (``(what it is, path)``)."""
    if target.is_dir():
        raise OutputError(f"{option} {target} is a folder; give a file name, such as {target / 'predictions.csv'}")
    own = _identity(target)
    for what, path in inputs:
        if _identity(path) == own:
            raise OutputError(f"{option} {target} is the {what} ({path}); refusing to write over an input. "
                              f"Choose another path for {option}")


def refuse_inside(out_dir: Path, folder: Path, what: str, option: str) -> None:
    """Raise :class:`OutputError` if ``out_dir`` is ``folder`` (an input folder, ``what``) or lies inside it."""
    out, inp = out_dir.resolve(), folder.resolve()
    if out == inp or inp in out.parents:
        raise OutputError(f"{option} {out_dir} is {'the' if out == inp else 'inside the'} {what} ({folder}); "
                          f"outputs never go among the inputs. Choose a folder outside {folder} for {option}")


def _files(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under ``folder`` but the manifest: relative path -> (inode, mtime ns, size)."""
    out = {}
    for path in folder.rglob("*"):
        if path.is_file() and path.name != MANIFEST:
            st = path.stat()
            out[path.relative_to(folder).as_posix()] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def _owned(folder: Path, tool: str) -> set[str]:
    """The files the manifest says ``tool`` wrote into ``folder`` (none without a readable manifest of it)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(manifest, dict) or manifest.get("written_by") != tool:
        return set()
    return {f for f in manifest.get("files", []) if isinstance(f, str)}


@contextlib.contextmanager
def claim_dir(out_dir: Path, tool: str, force: bool, writes: Callable[[str], bool],
              inputs: Sequence[tuple[str, Path]] = (), option: str = "--output-dir") -> Iterator[Path]:
    """Check that ``tool`` may write into ``out_dir``, run the body, then record what it wrote.

    Args:
        out_dir: the output folder (created by the body if need be).
        tool: the command, as the manifest and the messages name it.
        force: write into a folder that holds other files too (``--force``).
        writes: whether a path relative to ``out_dir`` is one the tool writes (names the files a forced run
            replaces, and refuses inputs stored under such a name even with ``force``).
        inputs: ``(what, path)`` of every input file.
        option: the command-line option of ``out_dir``, for the messages.

    Raises:
        OutputError: before the body runs, naming the files and the fix.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{option} {out_dir} is a file; give a folder")
    before = _files(out_dir) if out_dir.is_dir() else {}
    for what, path in inputs:
        try:
            rel = path.resolve().relative_to(out_dir.resolve()).as_posix()
        except ValueError:
            continue
        if writes(rel):
            raise OutputError(f"{option} {out_dir}: the run would write {rel}, which is the {what} ({path}); "
                              f"refusing to write over an input. Choose another folder for {option}")
    owned = _owned(out_dir, tool)
    foreign = sorted(set(before) - owned)
    if foreign and not force:
        replaced = [f for f in foreign if writes(f)]
        others = [f for f in foreign if not writes(f)]
        detail = "; ".join(part for part in (f"it would replace {_listing(replaced)}" if replaced else "",
                                             f"it also holds {_listing(others)}" if others else "") if part)
        raise OutputError(f"{option} {out_dir} holds {len(foreign)} file(s) that {tool} did not write there "
                          f"(none listed in its {MANIFEST}): {detail}. Choose a new or empty folder for {option}, "
                          "or pass --force to write into it anyway (files of the same name are replaced)")
    try:
        yield out_dir
    finally:
        if out_dir.is_dir():
            after = _files(out_dir)
            written = {f for f, stat in after.items() if before.get(f) != stat}
            files = sorted(written | (owned & set(after)))
            text = json.dumps({"written_by": tool, "files": files}, indent=2) + "\n"
            write_atomic(out_dir / MANIFEST, lambda p: p.write_text(text))

