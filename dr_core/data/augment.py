"""Random augmentation (albumentations). The deterministic part lives in ``preprocess``."""
from __future__ import annotations

from typing import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

AUG_LEVELS = ("none", "basic", "advanced")


def build_transforms(image_size: int, mean: Sequence[float], std: Sequence[float],
                     level: str = "advanced", strength: float = 1.0) -> A.Compose:
    """Transforms from a cached uint8 RGB image to a normalised float tensor (3, H, W).

    Args:
        image_size: model input side in pixels.
        mean: per-channel normalisation mean (0..1 scale), from the model's pretrained config.
        std: per-channel normalisation std.
        level: "none" (evaluation: resize only), "basic" (flips, rotation, brightness) or
            "advanced" (basic plus distortion, colour, blur/noise and coarse dropout).
        strength: multiplies the range of every random change (zoom, brightness, contrast,
            distortion, colour shifts, noise) and the probability of each optional one (capped at
            1). Rotation and flips are already full-range. 1.0 is the default recipe.
    """
    if level not in AUG_LEVELS:
        raise ValueError(f"augmentation level must be one of {AUG_LEVELS}, got {level!r}")
    if strength <= 0:
        raise ValueError(f"augmentation strength must be > 0, got {strength!r}")
    s = strength

    def p(base: float) -> float:
        return min(1.0, base * s)

    # The cache is already anti-aliased at cache_size (>= image_size); bilinear is enough for the
    # last small step and costs a quarter of INTER_AREA (measured in bench/loader.py).
    resize = A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR)
    ops: list[A.BasicTransform] = [resize]
    if level in ("basic", "advanced"):
        # Fundus photos have no canonical orientation: every dihedral flip is a valid view.
        ops += [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.Affine(rotate=(-180, 180), scale=(1 - 0.1 * s, 1 + 0.1 * s), border_mode=cv2.BORDER_CONSTANT,
                     fill=0, p=0.7),
            A.RandomBrightnessContrast(brightness_limit=0.15 * s, contrast_limit=0.15 * s, p=p(0.5)),
        ]
    if level == "advanced":
        ops += [
            A.OneOf([
                A.OpticalDistortion(distort_limit=0.1 * s, p=1.0),
                A.GridDistortion(num_steps=5, distort_limit=0.1 * s, p=1.0),
            ], p=p(0.25)),
            A.HueSaturationValue(hue_shift_limit=5 * s, sat_shift_limit=10 * s, val_shift_limit=5 * s, p=p(0.3)),
            A.OneOf([
                A.GaussianBlur(blur_limit=(3, 3), p=1.0),
                A.GaussNoise(std_range=(0.01 * s, 0.04 * s), p=1.0),
            ], p=p(0.2)),
            A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.04, 0.1),
                            hole_width_range=(0.04, 0.1), fill=0, p=p(0.2)),
        ]
    ops.append(A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0))
    return A.Compose(ops)


def resize_only(image_size: int) -> A.Compose:
    """Cached uint8 RGB image -> uint8 at the model's input size, nothing random: the loader's part when the
    training device augments (``train.augment_on: device``, :mod:`dr_core.data.batch_augment`)."""
    return A.Compose([A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR)])


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) float32 or uint8 -> (3, H, W) tensor without a copy beyond the transpose."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
