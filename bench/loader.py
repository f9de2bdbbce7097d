"""Benchmark what feeds the GPU: the training loader over the cache, and the cache's file format.

Part 1, loader: images/s of a DataLoader (2 workers) over the .npy cache (ArrayDataset +
build_transforms(224, ..., "advanced")) against a seed-style loader that decodes the original
JPEG, crops the frame and applies CLAHE for every sample, then the same augmentation.
Target: the cached loader >= 10x faster.

Part 2, format: cost per image of reading one cached image in random order from (a) the .npy
memmap, (b) one PNG file per image, (c) one JPEG (quality 95) file per image, and the bytes on
disk, at cache sizes 256 and 512.

Both run on eyepacs-dev; a temporary cache is built from it unless --cache is given.

    .venv/bin/python bench/loader.py [--cache data/cache | --cache-size 256] [--limit N] [--epochs 2]
        [--formats 256 512]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from dr_core.data.augment import build_transforms, to_tensor
from dr_core.data.cache import build_cache
from dr_core.config import PreprocessConfig
from dr_core.data.dataset import ArrayDataset, load_cache
from dr_core.data.preprocess import apply_clahe, crop_to_fundus

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eyepacs-dev"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet, as timm models use


class SeedStyleDataset(Dataset):
    """Decode the original photo, crop, CLAHE at full resolution, augment: every sample, every epoch."""

    def __init__(self, paths: list[Path], grades: np.ndarray, transform, cfg: PreprocessConfig) -> None:
        self.paths, self.grades, self.transform, self.cfg = paths, grades, transform, cfg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        rgb = cv2.cvtColor(cv2.imread(str(self.paths[index]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        rgb = apply_clahe(crop_to_fundus(rgb), self.cfg.clahe_clip, self.cfg.clahe_grid)
        return to_tensor(self.transform(image=rgb)["image"]), int(self.grades[index])


def make_loader(dataset: Dataset, batch_size: int, workers: int) -> DataLoader:
    """A shuffling DataLoader like the training one, with workers kept between epochs."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                      generator=torch.Generator().manual_seed(0), persistent_workers=workers > 0)


def epoch_rate(loader: DataLoader) -> float:
    """Images/s over one epoch, the first batch (worker start-up, warm-up) excluded."""
    seen, start = 0, None
    for images, _ in loader:
        if start is None:
            start = time.perf_counter()
            continue
        seen += len(images)
    return seen / (time.perf_counter() - start)


def temporary_cache(root: Path, img_dir: Path, labels: pd.DataFrame, size: int) -> Path:
    """A cache of every labelled image (all in train; val and test empty) under ``root``."""
    split_dir, out = root / f"split_{size}", root / f"cache_{size}"
    split_dir.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({"id": labels["image"], "file": labels["image"] + ".jpeg", "grade": labels["level"],
                          "patient": labels["image"].str.split("_").str[0]})
    table["group"] = table["patient"]
    table.to_csv(split_dir / "train.csv", index=False)
    for split in ("val", "test"):
        table.iloc[:0].to_csv(split_dir / f"{split}.csv", index=False)
    build_cache(split_dir, img_dir, out, PreprocessConfig(cache_size=size, workers=2))
    return out


def format_costs(images: np.ndarray, root: Path, rng: np.random.Generator) -> dict[str, tuple[float, int]]:
    """ms per image (random order, warm page cache) and bytes on disk for npy, PNG and JPEG q95."""
    order = rng.permutation(len(images))
    files = {"png": [], "jpeg q95": []}
    for i, image in enumerate(images):
        bgr = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)
        for kind, ext, flags in (("png", "png", []), ("jpeg q95", "jpg", [cv2.IMWRITE_JPEG_QUALITY, 95])):
            path = root / f"{i}.{ext}"
            cv2.imwrite(str(path), bgr, flags)
            files[kind].append(path)
    results = {}
    start = time.perf_counter()
    for i in order:
        np.array(images[i])  # copy out of the memmap, as ArrayDataset does
    results["npy memmap"] = (1e3 * (time.perf_counter() - start) / len(order), images.nbytes + 128)
    for kind, paths in files.items():
        start = time.perf_counter()
        for i in order:
            cv2.cvtColor(cv2.imread(str(paths[i]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        results[kind] = (1e3 * (time.perf_counter() - start) / len(order), sum(p.stat().st_size for p in paths))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="eyepacs-dev folder (labels.csv, images/)")
    parser.add_argument("--cache", type=Path, default=None, help="existing cache folder (train split used)")
    parser.add_argument("--cache-size", type=int, default=PreprocessConfig.cache_size,
                        help="cache_size of the temporary cache (without --cache)")
    parser.add_argument("--limit", type=int, default=0, help="images to use (0: all)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per loader, interleaved (best is kept)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--formats", type=int, nargs="*", default=[256, 512], help="cache sizes for part 2")
    args = parser.parse_args()
    # One OpenCV thread, set here in the parent: the forked loader workers inherit it. Calling
    # cv2.setNumThreads inside a forked worker can hang once the parent has used OpenCV threads.
    cv2.setNumThreads(1)
    labels = pd.read_csv(args.data / "labels.csv", dtype={"image": str})
    if args.limit:
        labels = labels.iloc[: args.limit]
    img_dir = args.data / "images"
    print(f"drgrade loader bench: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"{len(labels)} eyepacs-dev images, batch {args.batch_size}, {args.workers} loader workers")
    with tempfile.TemporaryDirectory(prefix="drgrade_bench_") as tmp:
        cache = args.cache or temporary_cache(Path(tmp), img_dir, labels, args.cache_size)
        images, meta = load_cache(cache, "train")
        cfg = PreprocessConfig(cache_size=images.shape[1])
        transform = build_transforms(224, MEAN, STD, "advanced")
        cached = ArrayDataset(images, meta["grade"].to_numpy(), transform)
        seed = SeedStyleDataset([img_dir / f for f in meta["file"]], meta["grade"].to_numpy(), transform, cfg)
        loaders = {"cache": make_loader(cached, args.batch_size, args.workers),
                   "seed": make_loader(seed, args.batch_size, args.workers)}
        rates = {"cache": 0.0, "seed": 0.0}
        for _ in range(args.epochs):  # interleaved, so that both see the same machine load
            for name, loader in loaders.items():
                rates[name] = max(rates[name], epoch_rate(loader))
        rate_cached, rate_seed = rates["cache"], rates["seed"]
        print(f"\n  loader images/s (224 px, 'advanced' augmentation, best of {args.epochs} epochs)")
        print(f"    cache ({cfg.cache_size} px .npy memmap)   {rate_cached:8.1f}")
        print(f"    seed-style (JPEG + crop + CLAHE)  {rate_seed:8.1f}")
        print(f"    speed-up                          {rate_cached / rate_seed:8.1f}x (target >= 10x)")

        rng = np.random.default_rng(0)
        print("\n  cache format: read one cached image in random order (warm page cache), bytes on disk")
        for size in args.formats:
            source = cache if size == cfg.cache_size else temporary_cache(Path(tmp), img_dir, labels, size)
            size_images, _ = load_cache(source, "train")
            fmt_dir = Path(tmp) / f"formats_{size}"
            fmt_dir.mkdir()
            for kind, (ms, nbytes) in format_costs(size_images, fmt_dir, rng).items():
                print(f"    {size} px  {kind:11s} {ms:7.3f} ms/image  {nbytes / 1e6:8.1f} MB "
                      f"({nbytes / len(size_images) / 1e3:6.1f} kB/image)")


if __name__ == "__main__":
    main()
