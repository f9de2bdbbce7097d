"""Datasets over the preprocessed cache (``data/cache/{split}.npy`` + ``{split}.csv``)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from dr_core.config import ConfigError
from dr_core.data.augment import to_tensor

SPLITS = ("train", "val", "test")


def load_cache(cache_dir: str | Path, split: str) -> tuple[np.ndarray, pd.DataFrame]:
    """Memory-map one split of the cache.

    Returns:
        images: uint8 array (N, S, S, 3), RGB, memory-mapped read-only.
        meta: the split's rows (id, file, grade, patient, group) in the same order.
    """
    cache_dir = Path(cache_dir)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    npy, csv = cache_dir / f"{split}.npy", cache_dir / f"{split}.csv"
    for path in (npy, csv):
        if not path.exists():
            raise FileNotFoundError(f"{path}: cache file missing; run `dvc repro preprocess` first")
    images = np.load(npy, mmap_mode="r")
    meta = pd.read_csv(csv, dtype={"id": str, "patient": str, "file": str})
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(meta):
        raise ValueError(f"{npy}: expected (N, S, S, 3) with N = {len(meta)} rows of {csv.name}, "
                         f"got {images.shape}; rebuild the cache with `dvc repro -f preprocess`")
    return images, meta


def source_rows(meta: pd.DataFrame, sources: Sequence[str], where: str) -> np.ndarray:
    """Positions of the rows of ``meta`` whose ``source`` is one of ``sources`` (all rows when empty).

    Raises ConfigError naming any source without a photo in ``where``, and the sources it has."""
    if not sources:
        return np.arange(len(meta))
    present = sorted(set(meta["source"])) if "source" in meta.columns else []
    missing = [name for name in sources if name not in present]
    if missing:
        raise ConfigError(f"{where}: no photographs of source(s) {missing} (train.sources); it holds {present}. "
                         "Name sources of data.sources, or leave train.sources empty for all")
    return np.flatnonzero(meta["source"].isin(list(sources)).to_numpy())


class ArrayDataset(Dataset):
    """(image, grade) pairs from a uint8 (N, H, W, 3) array and an albumentations transform; with
    ``indices``, only those rows of ``images`` (a memory map stays a memory map)."""

    def __init__(self, images: np.ndarray, grades: np.ndarray | None, transform: Callable,
                 indices: np.ndarray | None = None) -> None:
        self.images = images
        self.indices = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.grades = None if grades is None else np.asarray(grades, dtype=np.int64)
        if self.grades is not None and len(self.grades) != len(self.indices):
            raise ValueError(f"{len(self.grades)} grades for {len(self.indices)} images")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.transform(image=np.asarray(self.images[self.indices[index]]))["image"]
        grade = -1 if self.grades is None else int(self.grades[index])
        return to_tensor(image), grade


def cached_dataset(cache_dir: str | Path, split: str, transform: Callable,
                   sources: Sequence[str] = ()) -> tuple[ArrayDataset, pd.DataFrame]:
    """An :class:`ArrayDataset` over one cached split (only the photos of ``sources``, when given), and
    its rows."""
    images, meta = load_cache(cache_dir, split)
    keep = source_rows(meta, sources, str(Path(cache_dir) / f"{split}.csv"))
    meta = meta.iloc[keep].reset_index(drop=True)
    return ArrayDataset(images, meta["grade"].to_numpy(), transform, keep), meta
