"""A PNG preview of a segmentation: the slide thumbnail, the argmax class coloured over the
tissue, and a legend with the class names and colours.

Each thumbnail pixel takes the class of the heatmap pixel (token) under its centre; it is
tinted with that class's colour (:mod:`xt_core.outputs.colours`) where the token was analysed
and the tissue mask says tissue. Glass and skipped regions show the bare thumbnail. The
legend is a white panel on the right (Pillow's default font, sized to the image).
Deterministic: the same inputs give the same PNG bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from xt_core.outputs.colours import class_colour
from xt_core.outputs.preview import save_png


def heatmap_overlay(
    thumbnail: np.ndarray,
    heatmap: np.ndarray,
    token_size: tuple[float, float],
    slide_dimensions: tuple[int, int],
    *,
    origin: tuple[float, float] = (0.0, 0.0),
    tissue: np.ndarray | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """``thumbnail`` (RGB uint8 of the whole slide) with the argmax of ``heatmap`` tinted on it.

    ``tissue`` (a boolean mask over the whole slide, any size) limits the tint to tissue.
    """
    thumb = np.asarray(thumbnail, dtype=np.uint8)
    th, tw = thumb.shape[:2]
    heat = np.asarray(heatmap, dtype=np.float32)
    w0, h0 = slide_dimensions
    # level-0 centre of every thumbnail column / row -> heatmap column / row
    xs = (np.arange(tw) + 0.5) * (w0 / tw)
    ys = (np.arange(th) + 0.5) * (h0 / th)
    cols = np.floor((xs - origin[0]) / token_size[0]).astype(np.int64)
    rows = np.floor((ys - origin[1]) / token_size[1]).astype(np.int64)
    inside_c = (cols >= 0) & (cols < heat.shape[1])
    inside_r = (rows >= 0) & (rows < heat.shape[0])
    cols, rows = np.clip(cols, 0, heat.shape[1] - 1), np.clip(rows, 0, heat.shape[0] - 1)
    valid_tokens = ~np.isnan(heat).any(axis=-1)
    labels = np.argmax(np.nan_to_num(heat, nan=-1.0), axis=-1)
    show = valid_tokens[rows[:, None], cols[None, :]] & inside_r[:, None] & inside_c[None, :]
    if tissue is not None:
        mask = np.asarray(tissue, dtype=bool)
        mr = np.minimum((np.arange(th) + 0.5) * mask.shape[0] / th, mask.shape[0] - 1).astype(np.int64)
        mc = np.minimum((np.arange(tw) + 0.5) * mask.shape[1] / tw, mask.shape[1] - 1).astype(np.int64)
        show &= mask[mr[:, None], mc[None, :]]
    colours = np.array([class_colour(i) for i in range(heat.shape[-1])], dtype=np.float32)
    tint = colours[labels[rows[:, None], cols[None, :]]]
    out = thumb.astype(np.float32)
    out[show] = (1 - alpha) * out[show] + alpha * tint[show]
    return out.round().astype(np.uint8)


def add_legend(image: np.ndarray, classes: Sequence[str], title: str | None = None) -> np.ndarray:
    """``image`` with a white legend panel on its right: a colour box and the name of each class."""
    font = _font(max(11, round(max(image.shape[:2]) / 60)))  # readable next to a large thumbnail
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(text: str) -> tuple[int, int]:
        left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    lines = ([title] if title else []) + [str(c) for c in classes]
    line_h = max(14, max(text_size(t)[1] for t in lines) + 6)
    box = line_h - 4
    pad = 8
    width = pad + box + 6 + max(text_size(t)[0] for t in lines) + pad
    height = max(image.shape[0], pad * 2 + line_h * len(lines))
    canvas = Image.new("RGB", (image.shape[1] + width, height), (255, 255, 255))
    canvas.paste(Image.fromarray(np.asarray(image, dtype=np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0, y = image.shape[1] + pad, pad
    if title:
        draw.text((x0, y), title, fill=(0, 0, 0), font=font)
        y += line_h
    for i, name in enumerate(classes):
        draw.rectangle([x0, y, x0 + box, y + box], fill=class_colour(i), outline=(0, 0, 0))
        draw.text((x0 + box + 6, y), str(name), fill=(0, 0, 0), font=font)
        y += line_h
    return np.asarray(canvas)


def _font(size: int):
    """Pillow's bundled default font at ``size`` px (its fixed bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def write_heatmap_png(
    path: str | os.PathLike,
    thumbnail: np.ndarray,
    heatmap: np.ndarray,
    classes: Sequence[str],
    token_size: tuple[float, float],
    slide_dimensions: tuple[int, int],
    *,
    origin: tuple[float, float] = (0.0, 0.0),
    tissue: np.ndarray | None = None,
    title: str | None = None,
    alpha: float = 0.45,
) -> Path:
    """Write the overlay with its legend as a PNG, atomically; returns the path."""
    overlay = heatmap_overlay(thumbnail, heatmap, token_size, slide_dimensions, origin=origin,
                              tissue=tissue, alpha=alpha)
    return save_png(path, add_legend(overlay, classes, title))
