"""The small interface a slide reader library is wrapped into.

A backend answers in *level* pixel coordinates only and may assume its arguments are inside
the level. Clipping, padding with white, level-0 coordinates, resampling and thread handling
live once in :class:`xt_core.slide.Slide`, so every backend behaves the same at the edges.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SlideMetadata:
    """What a backend reads from the file header, before any user override."""

    level_dimensions: tuple[tuple[int, int], ...]  # (width, height) per level
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float] | None
    vendor: str | None
    objective_power: float | None
    associated_images: tuple[str, ...]
    properties: dict[str, str] = field(default_factory=dict)
    #: Why the header's pixel size was not taken (``mpp`` is then None): see
    #: :func:`xt_core.slide.mpp.judge_mpp`. None when it was taken or there was none.
    mpp_rejected: str | None = None


class SlideBackend(ABC):
    """One open handle on one slide file through one reader library."""

    #: Registered name, e.g. ``"openslide"``.
    name: str = ""
    #: True when one handle may be read from several threads at once (a backend may set it per
    #: instance, for the file it opened).
    thread_safe: bool = False

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)

    @abstractmethod
    def metadata(self) -> SlideMetadata:
        """Geometry and header values of the slide."""

    @abstractmethod
    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 ``(height, width, 3)`` pixels of ``level`` starting at level pixel (x, y).

        The box lies inside the level; transparent pixels are composited onto white.
        """

    @abstractmethod
    def read_associated(self, name: str) -> np.ndarray:
        """An associated image (label, macro, thumbnail) as RGB uint8."""

    def close(self) -> None:
        """Release the file handle."""


def rgba_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite straight (un-premultiplied) RGBA onto a white background, as a scanner's glass looks.

    OpenSlide returns pre-multiplied ARGB converted to RGBA with zero alpha outside the
    scanned area; compositing onto white keeps that area background-coloured.
    """
    if rgba.shape[-1] == 3:
        return np.ascontiguousarray(rgba, dtype=np.uint8)
    if int(rgba[..., 3].min()) == 255:  # the common case inside a slide: nothing to blend
        return np.ascontiguousarray(rgba[..., :3])
    rgb = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:4].astype(np.uint16)
    out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)
