"""The segmentation heatmap as a tiled, pyramidal OME-TIFF with its physical pixel size.

One heatmap pixel is one token of the model: it covers ``token_size`` level-0 pixels of the
slide, so its physical size is ``token_size * slide mpp`` microns. That size is written both
as OME ``PhysicalSizeX/Y`` (µm) and as the TIFF resolution tags (tiffslide, QuPath and
napari read one or the other), so the heatmap overlays the slide when both are shown at
their physical scale. Heatmap pixel (0, 0) sits at the slide's level-0 ``origin`` (0, 0 for
every grid napari-xt makes); its right and bottom edges may reach past the slide, up to the
end of the last region (the grid pads the slide to whole regions).

Two kinds of image:

* **probabilities** (default): ``C`` float32 channels ``CYX``, one per class, named after the
  classes in the OME-XML; values in [0, 1]. Regions that were skipped as background are 0
  in every channel (so the channels sum to 1 on analysed tissue, 0 elsewhere). float32 keeps
  the model's numbers exactly; the file is small anyway (one pixel per token).
* **labels** (``labels=True``): one ``YX`` channel, uint8 (uint16 beyond 254 classes):
  0 = background / not analysed, ``i + 1`` = class ``i`` (the argmax). The mapping is in an
  OME MapAnnotation.

The pyramid is stored in SubIFDs, halving per level until the image fits one tile:
probabilities are averaged 2 x 2 (over analysed pixels only), labels are subsampled (nearest).
Writing is deterministic (no timestamp; the OME UUID is derived from the content), so the
same heatmap always gives the same bytes, and atomic (temporary name, then rename).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np

from xt_core.outputs.atomic import atomic_path

_NAMESPACE = uuid.UUID("6f0c1a52-6c1e-4d3c-9a8e-5c7a4e0b9d21")


def heatmap_labels(heatmap: np.ndarray) -> np.ndarray:
    """``(rows, cols, C)`` probabilities (NaN = skipped) -> ``(rows, cols)`` labels, 0 = background."""
    heat = np.asarray(heatmap, dtype=np.float32)
    valid = ~np.isnan(heat).any(axis=-1)
    dtype = np.uint8 if heat.shape[-1] < 255 else np.uint16
    labels = np.zeros(heat.shape[:2], dtype=dtype)
    if valid.any():
        labels[valid] = (np.argmax(heat[valid], axis=-1) + 1).astype(dtype)
    return labels


def pyramid_levels(image: np.ndarray, tile: int, labels: bool) -> list[np.ndarray]:
    """``image`` (``CYX`` float with NaN, or ``YX`` labels) and its halvings until it fits ``tile``."""
    levels = [image]
    while max(levels[-1].shape[-2:]) > tile:
        prev = levels[-1]
        if labels:
            levels.append(np.ascontiguousarray(prev[..., ::2, ::2]))
        else:
            levels.append(_nan_mean_2x2(prev))
    return levels


def write_heatmap_tiff(
    path: str | os.PathLike,
    heatmap: np.ndarray,
    classes: Sequence[str],
    token_size: tuple[float, float],
    mpp: tuple[float, float] | None,
    *,
    labels: bool = False,
    origin: tuple[float, float] = (0.0, 0.0),
    name: str | None = None,
    tile: int = 256,
    compression: str | None = "zlib",
) -> Path:
    """Write ``heatmap`` ``(rows, cols, C)`` (NaN = skipped) as a pyramidal OME-TIFF at ``path``.

    ``token_size`` is a heatmap pixel's (width, height) in level-0 pixels and ``mpp`` the
    slide's level-0 microns per pixel (x, y); without ``mpp`` no physical size is written.
    ``labels`` writes argmax labels (0 = background, class ``i`` -> ``i + 1``) instead of the
    per-class probabilities. ``tile`` (a multiple of 16) is the tile side and the size at
    which the pyramid stops.
    """
    import tifffile

    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 3 or heat.shape[-1] != len(classes):
        raise ValueError(f"heatmap must be (rows, cols, {len(classes)}), got {heat.shape}")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    if labels:
        base = heatmap_labels(heat)
        channel_names = ["labels"]
        axes = "YX"
    else:
        base = np.ascontiguousarray(heat.transpose(2, 0, 1))  # CYX, NaN kept for the pyramid
        channel_names = [str(c) for c in classes]
        axes = "CYX"
    levels = pyramid_levels(base, tile, labels)
    levels = [lvl if labels else np.nan_to_num(lvl, nan=0.0).astype(np.float32) for lvl in levels]

    annotation = {
        "kind": "labels" if labels else "probabilities",
        "classes": json.dumps([str(c) for c in classes]),
        "token_size_px": json.dumps([float(token_size[0]), float(token_size[1])]),
        "origin_px": json.dumps([float(origin[0]), float(origin[1])]),
        "software": "napari-xt",
    }
    if labels:
        annotation["label_0"] = "background"
        annotation.update({f"label_{i + 1}": str(c) for i, c in enumerate(classes)})
    metadata: dict = {"axes": axes, "Channel": {"Name": channel_names}, "Creator": "napari-xt",
                      "MapAnnotation": annotation}
    if name:
        metadata["Name"] = str(name)
    pixel_um = None
    if mpp is not None:
        # 12 significant digits: 256.513... px * 0.499 um/px is written 128, not 127.99999999999999
        pixel_um = (float(f"{token_size[0] * mpp[0]:.12g}"), float(f"{token_size[1] * mpp[1]:.12g}"))
        metadata.update(PhysicalSizeX=pixel_um[0], PhysicalSizeXUnit="µm",
                        PhysicalSizeY=pixel_um[1], PhysicalSizeYUnit="µm")
    digest = hashlib.sha256(json.dumps(metadata, sort_keys=True, default=str).encode())
    digest.update(levels[0].tobytes())
    metadata["UUID"] = f"urn:uuid:{uuid.uuid5(_NAMESPACE, digest.hexdigest())}"

    options: dict = dict(tile=(tile, tile), compression=compression, photometric="minisblack",
                         software="napari-xt")
    nbytes = sum(lvl.nbytes for lvl in levels)
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=nbytes > 2**31, ome=True) as tif:
            for k, level in enumerate(levels):
                extra: dict = {}
                if pixel_um is not None:
                    f = 2**k
                    extra = dict(resolution=(1e4 / (pixel_um[0] * f), 1e4 / (pixel_um[1] * f)),
                                 resolutionunit="CENTIMETER")
                if k == 0:
                    tif.write(level, subifds=len(levels) - 1, metadata=metadata, **options, **extra)
                else:
                    tif.write(level, subfiletype=1, metadata=None, **options, **extra)
    return Path(path)


def _nan_mean_2x2(image: np.ndarray) -> np.ndarray:
    """Mean of 2 x 2 blocks over the last two axes, ignoring NaN (all-NaN blocks stay NaN)."""
    h, w = image.shape[-2:]
    h2, w2 = math.ceil(h / 2), math.ceil(w / 2)
    pad = [(0, 0)] * (image.ndim - 2) + [(0, 2 * h2 - h), (0, 2 * w2 - w)]
    padded = np.pad(image.astype(np.float64), pad, constant_values=np.nan)
    blocks = padded.reshape(*image.shape[:-2], h2, 2, w2, 2)
    valid = ~np.isnan(blocks)
    total = np.where(valid, blocks, 0.0).sum(axis=(-3, -1))
    count = valid.sum(axis=(-3, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out.astype(np.float32)
