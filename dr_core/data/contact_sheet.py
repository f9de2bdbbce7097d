"""A labelled grid of (original, preprocessed) pairs, for looking at what the cache holds."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

LABEL_HEIGHT = 22  # px of caption above each pair
GAP = 6  # px between pairs
BACKGROUND = (48, 48, 48)  # grey: equal channels, so make_grid's one pad value matches
TEXT = (235, 235, 235)


def fit_tile(rgb: np.ndarray, tile: int) -> np.ndarray:
    """Letterbox ``rgb`` into a ``tile`` x ``tile`` square (aspect kept, grey bands)."""
    h, w = rgb.shape[:2]
    scale = tile / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    small = cv2.resize(rgb, (new_w, new_h), interpolation=interp)
    out = np.full((tile, tile, 3), BACKGROUND, np.uint8)
    top, left = (tile - new_h) // 2, (tile - new_w) // 2
    out[top:top + new_h, left:left + new_w] = small
    return out


def make_contact_sheet(pairs: Sequence[tuple[np.ndarray, np.ndarray, str]], tile: int = 192,
                       columns: int = 2) -> np.ndarray:
    """Lay out (original, processed, caption) triples as a grid of side-by-side pairs.

    Each cell (caption above the pair) is drawn here; torchvision's ``make_grid`` lays the cells out.

    Args:
        pairs: RGB uint8 images of any size (each is letterboxed into a tile) and a short caption
            (for example ``"train 10_left grade 2"``).
        tile: side of each image tile in px.
        columns: pairs per row.

    Returns:
        RGB uint8 image; an empty grey cell if ``pairs`` is empty.
    """
    import torch
    from torchvision.utils import make_grid

    if tile < 16 or columns < 1:
        raise ValueError(f"make_contact_sheet: tile must be >= 16 and columns >= 1, got {tile}, {columns}")
    cells = [_cell(original, processed, caption, tile) for original, processed, caption in pairs]
    if not cells:
        cells = [np.full((tile + LABEL_HEIGHT, 2 * tile + GAP, 3), BACKGROUND, np.uint8)]
    batch = torch.from_numpy(np.stack(cells)).permute(0, 3, 1, 2)  # (N, 3, H, W) uint8
    grid = make_grid(batch, nrow=columns, padding=GAP, pad_value=BACKGROUND[0])
    return np.ascontiguousarray(grid.permute(1, 2, 0).numpy())


def _cell(original: np.ndarray, processed: np.ndarray, caption: str, tile: int) -> np.ndarray:
    """The caption strip over the original and the processed photo, side by side."""
    cell = np.full((tile + LABEL_HEIGHT, 2 * tile + GAP, 3), BACKGROUND, np.uint8)
    scale = 0.45 * LABEL_HEIGHT / 22
    cv2.putText(cell, _clip_text(caption, cell.shape[1], scale), (2, LABEL_HEIGHT - 7),
                cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT, 1, cv2.LINE_AA)
    cell[LABEL_HEIGHT:, :tile] = fit_tile(original, tile)
    cell[LABEL_HEIGHT:, tile + GAP:] = fit_tile(processed, tile)
    return cell


def _clip_text(text: str, width: int, scale: float) -> str:
    """Shorten ``text`` with '..' until it fits in ``width`` px."""
    while len(text) > 3:
        (w, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        if w <= width - 4:
            break
        text = text[:-3] + ".."
    return text
