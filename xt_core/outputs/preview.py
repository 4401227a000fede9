"""PNG previews a person looks at: the slide thumbnail with what we found drawn on it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from xt_core.outputs.atomic import atomic_path


def tissue_overlay(
    thumbnail: np.ndarray,
    mask: np.ndarray,
    colour: tuple[int, int, int] = (0, 200, 0),
    alpha: float = 0.35,
) -> np.ndarray:
    """The thumbnail with tissue tinted and its outline drawn, RGB uint8.

    ``mask`` may be coarser than the thumbnail; it is resized (nearest) to fit.
    """
    from skimage.segmentation import find_boundaries

    if mask.shape != thumbnail.shape[:2]:
        mask = np.asarray(
            Image.fromarray(mask.astype(np.uint8) * 255).resize(
                (thumbnail.shape[1], thumbnail.shape[0]), Image.Resampling.NEAREST
            )
        ) > 127
    out = thumbnail.astype(np.float32)
    tint = np.asarray(colour, dtype=np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * tint
    edge = find_boundaries(mask, mode="inner")
    out[edge] = tint
    return out.round().astype(np.uint8)


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 array as PNG, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    return Path(path)
