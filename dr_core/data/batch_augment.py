"""Random augmentation of a whole batch on the training device (``train.augment_on: device``).

The loader workers then only read and resize cached uint8 photos; flips, rotation and zoom, distortion,
brightness and contrast, colour, blur or noise, and dropout run here as batched tensor ops after the
host-to-device copy, each photo with its own random draws. It is the same recipe as
:func:`dr_core.data.augment.build_transforms` (same ranges and probabilities, scaled by ``strength``), not
the same pixels: albumentations draws and interpolates its own way. On a GPU this moves the per-photo CPU
cost that limits the loader (3-5 ms per photo at 384-512 px, bench/augment.py) onto the GPU. On a CPU it
runs too (tests), but 1.5-3x slower per photo than albumentations: keep ``workers`` there.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from dr_core.data.augment import AUG_LEVELS

# RGB <-> YIQ: hue is a rotation of the (I, Q) chroma plane, saturation a scaling of it.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)
_GAUSS3 = torch.tensor([0.2741, 0.4519, 0.2741])  # sigma 0.8: what albumentations uses for a 3 px kernel


class BatchAugment:
    """``(B, 3, H, W)`` uint8 on any device -> augmented, normalised float32 on the same device.

    Every per-photo choice (which changes, their amounts) is drawn on the CPU, so the draws are the same
    on every device and choosing the photos for an optional change needs no device sync; only the pixel
    noise is drawn on the device. Optional changes are computed on the photos that draw them only.

    Args:
        mean, std: per-channel normalisation (0..1 scale), as for the model's pretrained weights.
        level: "basic" (flips, rotation and zoom, brightness and contrast) or "advanced" (plus grid
            distortion, hue/saturation/value, blur or noise, coarse dropout); "none" only normalises.
        strength: multiplies every range and optional probability, as ``train.aug_strength``.
        seed_offset: added to every seed (one per process under DDP).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], level: str = "advanced",
                 strength: float = 1.0, seed_offset: int = 0) -> None:
        if level not in AUG_LEVELS:
            raise ValueError(f"augmentation level must be one of {AUG_LEVELS}, got {level!r}")
        if strength <= 0:
            raise ValueError(f"augmentation strength must be > 0, got {strength!r}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.level, self.strength, self.seed_offset = level, strength, seed_offset
        self.set_random_seed(0)

    def set_random_seed(self, seed: int) -> None:
        """Restart the random draws: an epoch's augmentation is a function of its seed only."""
        self.seed = seed + self.seed_offset
        self._draws = torch.Generator().manual_seed(self.seed)
        self._noise: dict[torch.device, torch.Generator] = {}

    def _noise_generator(self, device: torch.device) -> torch.Generator:
        if device not in self._noise:
            # its own stream: seed + 1 would be the next epoch's draws
            self._noise[device] = torch.Generator(device=device).manual_seed(self.seed + 2**32)
        return self._noise[device]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"expected a uint8 batch (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        x = images.float().div_(255.0)
        if self.level != "none":
            x = self._augment(x)
        if self.mean.device != x.device:  # once: the normalisation constants follow the batches' device
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return (x - self.mean) / self.std

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        b, s, adv, dev, g = x.shape[0], self.strength, self.level == "advanced", x.device, self._draws

        def p(base: float) -> float:
            return min(1.0, base * s)

        def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
            return torch.rand(b, *shape, generator=g) * (hi - lo) + lo

        def chance(prob: float) -> torch.Tensor:
            return torch.rand(b, generator=g) < prob

        # geometry: dihedral flips, rotation and zoom as one affine map of output to input coordinates
        flip_x = torch.where(chance(0.5), -1.0, 1.0)
        flip_y = torch.where(chance(0.5), -1.0, 1.0)
        on = chance(0.7)
        angle = torch.where(on, uniform(-math.pi, math.pi), 0.0)
        zoom = torch.where(on, uniform(1 - 0.1 * s, 1 + 0.1 * s), 1.0)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos * flip_x, -sin * flip_x, torch.zeros(b)], 1),
                             torch.stack([sin * flip_y, cos * flip_y, torch.zeros(b)], 1)], 1)
        grid = F.affine_grid(theta.to(dev), list(x.shape), align_corners=False)
        # brightness and contrast: x * alpha + beta
        bc = chance(p(0.5)).float()
        alpha = 1 + uniform(-0.15 * s, 0.15 * s) * bc
        beta = uniform(-0.15 * s, 0.15 * s) * bc
        if adv:
            # grid distortion: the 6 x 6 corners of 5 x 5 cells move by up to distort_limit (0.1 * s) of a
            # cell (2 / 5 of the [-1, 1] span), smoothly interpolated in between
            steps, limit = 5, 0.1 * s
            offsets = uniform(-limit, limit, 2, steps + 1, steps + 1) * (2.0 / steps)
            rows = _rows(chance(p(0.25)), dev)
            if rows is not None:
                warp = F.interpolate(offsets.to(dev)[rows], size=x.shape[-2:], mode="bicubic", align_corners=True)
                grid[rows] += warp.permute(0, 2, 3, 1)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        x = x * alpha.to(dev).view(b, 1, 1, 1) + beta.to(dev).view(b, 1, 1, 1)
        if adv:
            colour = chance(p(0.3))
            mix, shift = _colour_matrices(uniform, s)
            pick = chance(p(0.2))
            blur = pick & chance(0.5)
            sigma = uniform(0.01 * s, 0.04 * s)
            holes = chance(p(0.2))
            hole_boxes = _boxes(uniform, g, b, x.shape[-2:])
            rows = _rows(colour, dev)
            if rows is not None:
                x[rows] = torch.einsum("bij,bjhw->bihw", mix.to(dev)[rows], x[rows]) + shift.to(dev)[rows].view(-1, 1, 1, 1)
            rows = _rows(blur, dev)
            if rows is not None:
                x[rows] = _blur3(x[rows])
            rows = _rows(pick & ~blur, dev)
            if rows is not None:
                noise = torch.randn((len(rows), *x.shape[1:]), generator=self._noise_generator(dev), device=dev)
                x[rows] += noise * sigma.to(dev)[rows].view(-1, 1, 1, 1)
            rows = _rows(holes, dev)
            if rows is not None:
                x[rows] *= ~_holes(*(t.to(dev)[rows] for t in hole_boxes), x.shape[-2:])
        return x.clamp_(0.0, 1.0)


def _rows(mask: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """The batch positions where the CPU ``mask`` is set, on ``device``; None when there are none."""
    rows = torch.nonzero(mask).flatten()
    return rows.to(device) if len(rows) else None


def _colour_matrices(uniform, s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per photo, the RGB -> RGB matrix of a hue rotation (up to 10 degrees) and saturation change (10/255
    of its range, relative to a typical saturation of 0.5), and a value shift (5/255)."""
    hue = uniform(-10 * s, 10 * s) * math.pi / 180
    sat = 1 + uniform(-10 * s / 255, 10 * s / 255) * 2
    shift = uniform(-5 * s / 255, 5 * s / 255)
    b = hue.shape[0]
    chroma = torch.zeros(b, 3, 3)
    chroma[:, 0, 0] = 1
    chroma[:, 1, 1], chroma[:, 1, 2] = sat * torch.cos(hue), -sat * torch.sin(hue)
    chroma[:, 2, 1], chroma[:, 2, 2] = sat * torch.sin(hue), sat * torch.cos(hue)
    return _YIQ_TO_RGB @ chroma @ _RGB_TO_YIQ, shift


def _blur3(x: torch.Tensor) -> torch.Tensor:
    """Gaussian blur with a 3 x 3 kernel (two 1-D passes), channel by channel, edges reflected."""
    k = _GAUSS3.to(x.device)
    x = F.conv2d(F.pad(x, (1, 1, 0, 0), mode="reflect"), k.view(1, 1, 1, 3).expand(3, 1, 1, 3), groups=3)
    return F.conv2d(F.pad(x, (0, 0, 1, 1), mode="reflect"), k.view(1, 1, 3, 1).expand(3, 1, 3, 1), groups=3)


def _boxes(uniform, g: torch.Generator, b: int, size: torch.Size) -> tuple[torch.Tensor, ...]:
    """Per photo, 1 to 4 rectangles of 4-10% of each side: (used, top, left, height, width), each (B, 4)."""
    h, w = size
    n = torch.randint(1, 5, (b, 1), generator=g)
    used = torch.arange(4).view(1, 4) < n
    hh, ww = uniform(0.04, 0.1, 4) * h, uniform(0.04, 0.1, 4) * w
    top, left = uniform(0, 1, 4) * (h - hh), uniform(0, 1, 4) * (w - ww)
    return used, top, left, hh, ww


def _holes(used: torch.Tensor, top: torch.Tensor, left: torch.Tensor, hh: torch.Tensor, ww: torch.Tensor,
           size: torch.Size) -> torch.Tensor:
    """(N, 1, H, W) mask of the used rectangles."""
    h, w = size
    rows = torch.arange(h, device=top.device).view(1, 1, h, 1)
    cols = torch.arange(w, device=top.device).view(1, 1, 1, w)
    inside_rows = (rows >= top[..., None, None]) & (rows < (top + hh)[..., None, None])  # (N, 4, H, 1)
    inside_cols = (cols >= left[..., None, None]) & (cols < (left + ww)[..., None, None])  # (N, 4, 1, W)
    return (inside_rows & inside_cols & used[..., None, None]).any(1, keepdim=True)
