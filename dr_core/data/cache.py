"""Build the preprocessed image cache: ``{train,val,test}.npy`` uint8 (N, S, S, 3) + CSV rows.

Each split is written into a memory-mapped temporary file beside ``<split>.npy`` as a pool of
worker processes delivers images (memory stays bounded whatever the dataset size), flushed, then
renamed to ``<split>.npy``: an interrupted build leaves no half-written cache under the final name.
Row i of ``<split>.npy`` is row i of ``<split>.csv``, a byte-for-byte copy of the split CSV, whose
``source`` column says which source (``data.sources``) each photograph came from.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import cv2
import numpy as np
import pandas as pd

from dr_core.config import InputError, PreprocessConfig
from dr_core.data.contact_sheet import make_contact_sheet
from dr_core.runtime.io import write_atomic
from dr_core.runtime.workers import pool_context, resolve_workers
from dr_core.data.preprocess import preprocess_file, read_fundus
from dr_core.runtime.progress import progress

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SHEET_PER_GRADE = 2  # contact sheet: pairs per grade
SHEET_TILE = 192  # contact sheet: tile side in px
FLUSH_EVERY = 1024  # images between flushes of the memory map

Task = tuple[int, str]  # (row index, image path)
Imap = Callable[[Iterable[Task]], Iterator[tuple[int, np.ndarray]]]


class CacheBuildError(InputError, RuntimeError):
    """An image could not be read or preprocessed; the message names the file."""


def build_cache(split_dir: Path, img_dir: Path | Mapping[str, Path], out_dir: Path, cfg: PreprocessConfig) -> dict:
    """Preprocess every image of the three splits into ``out_dir``.

    Writes ``{split}.npy``, ``{split}.csv``, ``contact_sheet.png`` and ``cache_info.json``.

    Args:
        split_dir: folder with ``{train,val,test}.csv`` (a ``file`` column relative to the image folder).
        img_dir: folder of the original photographs, or one per source (the split CSVs' ``source`` column).
        out_dir: cache folder, created if needed.
        cfg: preprocessing settings; ``cfg.workers`` processes (0: one per available core).

    Returns:
        The content of ``cache_info.json``: settings, and count and bytes per split and in total.
        Timings are logged, not written: a rerun must reproduce the cache byte for byte.

    Raises:
        FileNotFoundError: a split CSV or an image it lists is missing.
        CacheBuildError: an image could not be decoded or processed (the message names it).
    """
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    tables = {split: read_split_csv(split_dir / f"{split}.csv") for split in SPLITS}
    paths = {split: image_paths(tables[split], img_dir, split_dir / f"{split}.csv") for split in SPLITS}
    total = sum(len(p) for p in paths.values())
    workers = resolve_workers(cfg.workers, total)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("caching %d images at %d px with %d worker(s) into %s", total, cfg.cache_size, workers, out_dir)

    splits: dict[str, dict] = {}
    elapsed = 0.0
    with _ImageMapper(cfg, workers) as imap:
        for split in SPLITS:
            npy = out_dir / f"{split}.npy"
            seconds = write_split(npy, paths[split], cfg.cache_size, imap, desc=split)
            shutil.copyfile(split_dir / f"{split}.csv", out_dir / f"{split}.csv")
            splits[split] = {"count": len(paths[split]), "bytes": npy.stat().st_size}
            log.info("%s: %d images in %.1f s (%.1f images/s), %.1f MB", split, len(paths[split]),
                     seconds, len(paths[split]) / max(seconds, 1e-9), splits[split]["bytes"] / 1e6)
            elapsed += seconds

    sheet = make_contact_sheet(_sheet_pairs(tables, paths, out_dir), tile=SHEET_TILE, columns=2)
    cv2.imwrite(str(out_dir / "contact_sheet.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    info = {
        "preprocess": dataclasses.asdict(cfg),
        "image_shape": [cfg.cache_size, cfg.cache_size, 3],
        "img_dirs": ({name: str(d) for name, d in img_dir.items()} if isinstance(img_dir, Mapping)
                     else {"": str(img_dir)}),
        "workers": workers,
        "splits": splits,
        "total": {"count": total, "bytes": sum(s["bytes"] for s in splits.values())},
    }
    (out_dir / "cache_info.json").write_text(json.dumps(info, indent=2) + "\n")
    log.info("cache done: %d images, %.1f images/s, %.1f MB", total, total / max(elapsed, 1e-9),
             info["total"]["bytes"] / 1e6)
    return info


def write_split(npy: Path, paths: list[Path], size: int, imap: Imap, desc: str = "") -> float:
    """Fill ``npy`` (uint8 (N, size, size, 3)) with the processed images; returns the seconds taken.

    Written to a temporary file beside it and renamed when complete (:func:`write_atomic`); the
    temporary file is removed on error.
    """
    start = time.perf_counter()

    def fill(tmp: Path) -> None:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
        try:
            tasks = [(i, str(p)) for i, p in enumerate(paths)]
            for n, (index, image) in enumerate(progress(imap(tasks), total=len(tasks), desc=desc, unit="img",
                                                    mininterval=1.0), start=1):
                array[index] = image
                if n % FLUSH_EVERY == 0:
                    array.flush()  # written pages become clean page cache the kernel can drop
            array.flush()
        finally:
            del array  # closes the memory map before the rename or the removal

    write_atomic(npy, fill)
    return time.perf_counter() - start


def process_file(task: Task, cfg: PreprocessConfig) -> tuple[int, np.ndarray]:
    """Worker: read and preprocess one image; errors become :class:`CacheBuildError` naming it."""
    index, path = task
    try:
        image = preprocess_file(Path(path), cfg)
    except (OSError, ValueError, cv2.error) as err:
        message = str(err) if path in str(err) else f"{path}: {err}"
        raise CacheBuildError(message) from None
    return index, image


def read_split_csv(csv: Path) -> pd.DataFrame:
    """Read a split CSV as strings and check it has a non-empty ``file`` column."""
    if not csv.is_file():
        raise FileNotFoundError(f"{csv}: split CSV missing; run the split stage first (dvc repro split)")
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    if "file" not in table.columns:
        raise ValueError(f"{csv}: no 'file' column (columns: {list(table.columns)}); "
                         f"expected the split stage's id,file,grade,patient,group")
    empty = np.flatnonzero(table["file"].str.strip() == "")
    if len(empty):
        raise ValueError(f"{csv}: row {empty[0] + 2}: empty 'file' value; fix the split CSV")
    return table


def image_paths(table: pd.DataFrame, img_dir: Path | Mapping[str, Path], csv: Path) -> list[Path]:
    """The photograph file of each row of a split CSV: ``file`` in ``img_dir``, or in the folder of the
    row's ``source`` when ``img_dir`` maps source names to folders. Every file must exist."""
    if isinstance(img_dir, Mapping):
        if "source" not in table.columns:
            raise ValueError(f"{csv}: no 'source' column (columns: {list(table.columns)}); rerun the split stage")
        unknown = sorted(set(table["source"]) - set(img_dir))
        if unknown:
            raise ValueError(f"{csv}: photographs of source(s) {unknown}, which data.sources does not list "
                             f"({sorted(img_dir)}); rerun the split stage (dvc repro)")
        paths = [Path(img_dir[source]) / name for source, name in zip(table["source"], table["file"])]
    else:
        paths = [Path(img_dir) / name for name in table["file"]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{csv}: {len(missing)} listed image(s) not found, first: {missing[:3]}; "
                                "check the sources' img_dir (data.sources) or rerun the split stage")
    return paths


def process_chunk(tasks: list[Task], cfg: PreprocessConfig) -> list[tuple[int, np.ndarray]]:
    """Worker: :func:`process_file` over a chunk (one round trip per chunk, not per image)."""
    return [process_file(task, cfg) for task in tasks]


class _ImageMapper:
    """Context manager giving an unordered ``imap`` over tasks: in-process (1 worker) or a pool.

    The pool gets chunks of up to 16 tasks, at most ``2 * workers`` chunks in flight, so
    finished images never pile up in memory. Unlike ``multiprocessing.Pool``, whose ``imap``
    waits forever when a worker is killed (out of memory, a crash in a decoder), a dead worker
    raises :class:`CacheBuildError` naming the files of its chunk.
    """

    def __init__(self, cfg: PreprocessConfig, workers: int) -> None:
        self.cfg = cfg
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Imap:
        if self.workers == 1:
            return lambda tasks: map(functools.partial(process_file, cfg=self.cfg), tasks)
        self.pool = ProcessPoolExecutor(self.workers, mp_context=pool_context(["__main__", __name__]), initializer=_init_worker)
        return self._imap

    def _imap(self, tasks: Iterable[Task]) -> Iterator[tuple[int, np.ndarray]]:
        tasks = list(tasks)
        size = max(1, min(16, len(tasks) // (self.workers * 4)))
        chunks = (tasks[i:i + size] for i in range(0, len(tasks), size))
        pending = {self.pool.submit(process_chunk, c, self.cfg): c
                   for c in itertools.islice(chunks, 2 * self.workers)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                chunk = pending.pop(future)
                try:
                    results = future.result()
                except BrokenProcessPool as err:
                    raise CacheBuildError(
                        f"a preprocessing worker died (killed for memory, or a crash in an image decoder) "
                        f"while processing one of {[path for _, path in chunk]}; try that file alone "
                        f"with dr_core.data.preprocess.read_fundus") from err
                yield from results
                following = next(chunks, None)
                if following is not None:
                    pending[self.pool.submit(process_chunk, following, self.cfg)] = following

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=exc_type is not None)


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV threads would oversubscribe


def _sheet_pairs(tables: dict[str, pd.DataFrame], paths: dict[str, list[Path]],
                 out_dir: Path) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """A few (original, cached, caption) triples per grade, the first ones in split order."""
    picked: dict[str, int] = {}
    pairs = []
    for split in SPLITS:
        table = tables[split]
        if not len(table):
            continue
        cached = np.load(out_dir / f"{split}.npy", mmap_mode="r")
        grades = table["grade"] if "grade" in table.columns else pd.Series(["?"] * len(table))
        ids = table["id"] if "id" in table.columns else table["file"]
        for i, (grade, image_id) in enumerate(zip(grades, ids)):
            if picked.get(grade, 0) >= SHEET_PER_GRADE:
                continue
            picked[grade] = picked.get(grade, 0) + 1
            original = read_fundus(paths[split][i], SHEET_TILE)
            pairs.append((grade, split, (original, np.asarray(cached[i]), f"{split} {image_id} grade {grade}")))
    pairs.sort(key=lambda p: (p[0], SPLITS.index(p[1])))
    return [p[2] for p in pairs]
