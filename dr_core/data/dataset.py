"""Datasets over the preprocessed cache (``data/cache/{split}.npy`` + ``{split}.csv``)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

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


class ArrayDataset(Dataset):
    """(image, grade) pairs from a uint8 (N, H, W, 3) array and an albumentations transform."""

    def __init__(self, images: np.ndarray, grades: np.ndarray | None, transform: Callable) -> None:
        self.images = images
        self.grades = None if grades is None else np.asarray(grades, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.transform(image=np.asarray(self.images[index]))["image"]
        grade = -1 if self.grades is None else int(self.grades[index])
        return to_tensor(image), grade


def cached_dataset(cache_dir: str | Path, split: str, transform: Callable) -> tuple[ArrayDataset, pd.DataFrame]:
    """An :class:`ArrayDataset` over one cached split, and that split's rows."""
    images, meta = load_cache(cache_dir, split)
    return ArrayDataset(images, meta["grade"].to_numpy(), transform), meta
