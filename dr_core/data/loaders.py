"""Train and val loaders over the cache, re-seeded per epoch so that a resumed run repeats exactly."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler, get_worker_info

from dr_core.data.augment import build_transforms, resize_only
from dr_core.data.batch_augment import BatchAugment
from dr_core.config import Params
from dr_core.data.dataset import ArrayDataset, cached_dataset
from dr_core.runtime.distributed import DistInfo, ShardSampler


def _seed_worker(worker_id: int) -> None:
    info = get_worker_info()
    # torch gives each worker seed = base_seed + worker_id, base_seed drawn from the loader's generator
    info.dataset.transform.set_random_seed(info.seed % 2**32)
    np.random.seed(info.seed % 2**32)


@dataclass
class Loaders:
    """The train and val loaders and what seeding them needs."""

    train: DataLoader
    val: DataLoader
    train_grades: np.ndarray
    generator: torch.Generator
    augment: BatchAugment | None = None  # train.augment_on: device; the train loader then yields uint8

    def reseed(self, seed: int, epoch: int) -> None:
        """Make epoch ``epoch``'s shuffling and augmentation a function of (seed, epoch) only."""
        self.generator.manual_seed(seed * 1000 + epoch)
        if isinstance(self.train.sampler, DistributedSampler):
            self.train.sampler.set_epoch(epoch)
        dataset: ArrayDataset = self.train.dataset
        dataset.transform.set_random_seed(seed * 1000 + epoch)  # used when num_workers == 0
        if self.augment is not None:
            self.augment.set_random_seed(seed * 1000 + epoch)


def make_loaders(cache_dir: Path, params: Params, mean: Sequence[float], std: Sequence[float],
                 device: torch.device, dist: DistInfo = DistInfo()) -> Loaders:
    """Loaders for the cached train (augmented, shuffled or class-balanced) and val splits, of the
    photos of ``train.sources`` only when it names some.

    With ``train.augment_on: device`` the train loader only resizes (uint8 batches) and ``Loaders.augment``
    augments and normalises each batch on the device (:class:`dr_core.data.batch_augment.BatchAugment`).

    Distributed: each process sees a disjoint shard of train (DistributedSampler) and of val
    (every world_size-th image, no padding, so gathered predictions cover val exactly once).
    """
    t = params.train
    if t.num_workers:
        cv2.setNumThreads(0)  # OpenCV's thread pool does not survive fork into loader workers
    level = "advanced" if t.advanced_aug else "basic"
    augment = None
    if t.augment_on == "device":
        train_tf = resize_only(t.image_size)
        augment = BatchAugment(mean, std, level, t.aug_strength, seed_offset=dist.rank * 100_003)
    else:
        train_tf = build_transforms(t.image_size, mean, std, level, t.aug_strength)
    train_ds, train_meta = cached_dataset(cache_dir, "train", train_tf, t.sources)
    val_ds, _ = cached_dataset(cache_dir, "val", build_transforms(t.image_size, mean, std, "none"), t.sources)
    grades = train_meta["grade"].to_numpy()
    generator = torch.Generator().manual_seed(params.seed)
    sampler, val_sampler = None, None
    if dist.enabled:
        sampler = DistributedSampler(train_ds, dist.world_size, dist.rank, shuffle=True, seed=params.seed,
                                     drop_last=True)
        val_sampler = ShardSampler(len(val_ds), dist.rank, dist.world_size)
    elif t.balanced_sampler:
        counts = np.bincount(grades, minlength=params.model.num_classes)
        weights = 1.0 / counts[grades]
        sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(grades),
                                        replacement=True, generator=generator)
    common = dict(num_workers=t.num_workers, pin_memory=device.type == "cuda",
                  worker_init_fn=_seed_worker if t.num_workers else None,
                  persistent_workers=False)
    train = DataLoader(train_ds, batch_size=t.batch_size, shuffle=sampler is None, sampler=sampler,
                       generator=generator, drop_last=len(train_ds) > t.batch_size, **common)
    val = DataLoader(val_ds, batch_size=t.batch_size, shuffle=False, sampler=val_sampler, **common)
    return Loaders(train, val, grades, generator, augment)
