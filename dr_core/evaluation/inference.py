"""Grade probabilities from a trained model (any head), with optional test-time augmentation."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dr_core.data.augment import build_transforms
from dr_core.data.dataset import ArrayDataset
from dr_core.models.checkpoint import CheckpointMeta
from dr_core.models.heads import to_probs


def tta_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The eight dihedral views of a batch (B, C, H, W): flips and 90-degree rotations."""
    views = []
    for k in range(4):
        r = torch.rot90(x, k, dims=(2, 3))
        views += [r, torch.flip(r, dims=(3,))]
    return views


@torch.no_grad()
def predict_batch(model: nn.Module, x: torch.Tensor, head: str = "classification", num_classes: int = 5,
                  tta: bool = False) -> torch.Tensor:
    """Grade probabilities (B, K); with ``tta`` their mean over the eight dihedral views."""
    if not tta:
        return to_probs(head, model(x), num_classes)
    return torch.stack([to_probs(head, model(v), num_classes) for v in tta_views(x)]).mean(0)


@torch.no_grad()
def predict_probs(model: nn.Module, images: np.ndarray | Dataset, meta: CheckpointMeta,
                  batch_size: int = 64, device: str | torch.device = "cpu", tta: bool = False,
                  num_workers: int = 0) -> np.ndarray:
    """Grade probabilities (N, num_classes) for cached uint8 images (N, S, S, 3) or a Dataset.

    Images are resized to the checkpoint's ``image_size`` and normalised with its mean/std, exactly
    as evaluation does during training; NHWC when it was trained with ``channels_last``.
    """
    if isinstance(images, np.ndarray):
        transform = build_transforms(meta.image_size, meta.mean, meta.std, "none")
        images = ArrayDataset(images, None, transform)
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    model = model.to(device).eval()
    channels_last = meta.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    out = []
    for x, _ in loader:
        x = x.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(predict_batch(model, x, meta.head, meta.num_classes, tta).cpu())
    if not out:
        return np.zeros((0, meta.num_classes), dtype=np.float32)
    return torch.cat(out).numpy()
