"""Where augmentation runs (``train.augment_on``): albumentations per photo in the loader workers, or
:class:`dr_core.data.batch_augment.BatchAugment` on a whole batch on the training device.

Times both on one batch of one real photo (ms per photo, median of rounds, the ratio to albumentations in
the same run) on this machine's CPU and, when there is one, its GPU, and draws the same photo augmented
both ways side by side (``--sheet``). Nothing asserts on time.

    .venv/bin/python bench/augment.py --photo ../shared/data/eyepacs-dev/images/1084_left.jpeg \
        --sheet docs/augmentation.png
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from dr_core.config import PreprocessConfig
from dr_core.data.augment import build_transforms
from dr_core.data.batch_augment import BatchAugment
from dr_core.data.preprocess import preprocess_file

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def as_batch(photo: np.ndarray, n: int) -> torch.Tensor:
    """``n`` copies of a (H, W, 3) uint8 photo as the (n, 3, H, W) batch a loader would yield."""
    return torch.from_numpy(np.stack([photo] * n)).permute(0, 3, 1, 2).contiguous()


def timed(fn, rounds: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sheet(photo: np.ndarray, size: int, n: int, out: Path) -> None:
    """Row 1: albumentations (loader workers); row 2: BatchAugment (device); both 'advanced'. ``photo`` is
    a cached photo, already ``size`` px."""
    workers = build_transforms(size, MEAN, STD, "advanced")
    workers.set_random_seed(0)
    top = [workers(image=photo)["image"] * 0.5 + 0.5 for _ in range(n)]
    batch = as_batch(photo, n)
    device = BatchAugment(MEAN, STD, "advanced")
    device.set_random_seed(0)
    bottom = list((device(batch) * 0.5 + 0.5).permute(0, 2, 3, 1).numpy())
    rows = []
    for row, caption in ((top, "augment_on: workers (albumentations, per photo)"),
                         (bottom, "augment_on: device (BatchAugment, per batch)")):
        strip = (np.concatenate([np.clip(t, 0, 1) for t in row], 1) * 255).astype(np.uint8)
        label = np.full((44, strip.shape[1], 3), 48, np.uint8)
        cv2.putText(label, caption, (10, 32), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (235, 235, 235), 2, cv2.LINE_AA)
        rows += [label, strip]
    grid = np.concatenate(rows, 0)
    if grid.shape[1] > 1200:  # a picture for the docs, not a dataset: keep the file small
        grid = cv2.resize(grid, (1200, round(grid.shape[0] * 1200 / grid.shape[1])), interpolation=cv2.INTER_AREA)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    print(f"wrote {out}: top row albumentations (augment_on: workers), bottom row BatchAugment (device)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", type=Path, required=True, help="a fundus photograph")
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sheet", type=Path, help="write the side-by-side picture here")
    args = parser.parse_args()
    photo = preprocess_file(args.photo, PreprocessConfig(cache_size=args.size))
    workers = build_transforms(args.size, MEAN, STD, "advanced")
    base = timed(lambda: [workers(image=photo) for _ in range(args.batch)], args.rounds) / args.batch
    print(f"{'case':<40} {'ms/photo':>9} {'ratio':>6}")
    print(f"{'albumentations, one photo at a time (cpu)':<40} {1e3 * base:>9.2f} {1.0:>6.2f}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for name in devices:
        batch = as_batch(photo, args.batch).to(name)
        aug = BatchAugment(MEAN, STD, "advanced")

        def run() -> None:
            aug(batch)
            if name == "cuda":
                torch.cuda.synchronize()

        per_photo = timed(run, args.rounds) / args.batch
        print(f"{'BatchAugment, batch of ' + str(args.batch) + ' (' + name + ')':<40} {1e3 * per_photo:>9.2f} "
              f"{per_photo / base:>6.2f}")
    if args.sheet:
        sheet(photo, args.size, 6, args.sheet)


if __name__ == "__main__":
    main()
