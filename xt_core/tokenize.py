"""Nested tokenization: a slide -> a grid of R-px regions -> C-px backbone chunks.

The grid lives in *target* pixels (the working resolution, ``target_mpp`` microns each).
Regions are numbered in row-major (raster) order, which is the order the context encoder
reads them in; every region keeps its (row, col) so that positions stay 2D whatever is
skipped. The right and bottom edges are padded with white up to whole regions, and each
region records its valid extent, so any slide shape works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import numpy as np

from xt_core.slide import MPP_TOLERANCE, Slide

if TYPE_CHECKING:
    from xt_core.tissue import TissueMask

_EPS = 1e-9


@dataclass(frozen=True)
class Region:
    """One region of the grid."""

    index: int  # raster position: row * cols + col
    row: int
    col: int
    box: tuple[float, float, float, float]  # level-0 (x0, y0, x1, y1), padding included
    valid_size: tuple[int, int]  # (width, height) in target pixels that lie on the slide
    tissue_fraction: float  # 1.0 when no tissue mask was given


@dataclass(frozen=True)
class RegionGrid:
    """The region grid of one slide at one working resolution.

    ``scale`` is level-0 pixels per target pixel (x, y). When a pyramid level's pixel size
    is within tolerance of the target, the grid snaps to that level (``read_level``; scale is
    its downsample) so regions tile it exactly, pixel for pixel, without resampling.
    """

    slide_dimensions: tuple[int, int]
    target_dimensions: tuple[int, int]  # the slide's (width, height) in target pixels
    region_size: int
    chunk_size: int
    scale: tuple[float, float]
    target_mpp: float | None
    rows: int
    cols: int
    read_level: int | None
    tissue_fractions: np.ndarray = field(repr=False)  # (rows * cols,) float

    # ----------------------------------------------------------------- geometry
    @property
    def n_regions(self) -> int:
        return self.rows * self.cols

    @property
    def chunks_per_side(self) -> int:
        return self.region_size // self.chunk_size

    @property
    def region_size_level0(self) -> tuple[float, float]:
        """A region's (width, height) in level-0 pixels."""
        return (self.region_size * self.scale[0], self.region_size * self.scale[1])

    def region(self, index: int) -> Region:
        """Region ``index`` (raster order)."""
        if not 0 <= index < self.n_regions:
            raise IndexError(f"region {index} out of range 0..{self.n_regions - 1}")
        row, col = divmod(index, self.cols)
        rs = self.region_size
        sx, sy = self.scale
        tw, th = self.target_dimensions
        return Region(
            index=index,
            row=row,
            col=col,
            box=(col * rs * sx, row * rs * sy, (col + 1) * rs * sx, (row + 1) * rs * sy),
            valid_size=(min(rs, tw - col * rs), min(rs, th - row * rs)),
            tissue_fraction=float(self.tissue_fractions[index]),
        )

    def region_boxes(self) -> np.ndarray:
        """Level-0 boxes ``(n_regions, 4)`` of every region, raster order (x0, y0, x1, y1)."""
        rows, cols = np.divmod(np.arange(self.n_regions), self.cols)
        w, h = self.region_size_level0
        return np.stack([cols * w, rows * h, (cols + 1) * w, (rows + 1) * h], axis=1).astype(np.float64)

    def __len__(self) -> int:
        return self.n_regions

    def __iter__(self) -> Iterator[Region]:
        return (self.region(i) for i in range(self.n_regions))

    def tissue_indices(self, threshold: float | None) -> np.ndarray:
        """Raster indices of regions to encode: tissue fraction >= ``threshold`` (all if None)."""
        if threshold is None or threshold <= 0:
            return np.arange(self.n_regions)
        return np.flatnonzero(self.tissue_fractions >= threshold)

    def chunk_offsets(self) -> list[tuple[int, int]]:
        """(x, y) target-pixel offsets of the backbone chunks inside a region, row-major."""
        c, n = self.chunk_size, self.chunks_per_side
        return [(j * c, i * c) for i in range(n) for j in range(n)]

    # ----------------------------------------------------------------- pixels
    def read(self, slide: Slide, region: Region | int) -> np.ndarray:
        """The region's RGB uint8 pixels ``(R, R, 3)``; padding beyond the slide is white."""
        if isinstance(region, int):
            region = self.region(region)
        rs = self.region_size
        location = (region.box[0], region.box[1])
        if self.read_level is not None:
            pixels = slide.read_region(location, self.read_level, (rs, rs))
        else:
            pixels = slide.read_region_at_mpp(location, (rs, rs), self.target_mpp)
        vw, vh = region.valid_size
        if vw < rs or vh < rs:
            pixels = pixels.copy() if not pixels.flags.writeable else pixels
            pixels[vh:, :] = 255
            pixels[:, vw:] = 255
        return pixels


def make_region_grid(
    slide: Slide,
    *,
    target_mpp: float | None = 0.5,
    region_size: int = 512,
    chunk_size: int = 256,
    tissue: "TissueMask | None" = None,
) -> RegionGrid:
    """Cut ``slide`` into regions of ``region_size`` target pixels at ``target_mpp``.

    ``target_mpp=None`` works at the slide's level-0 pixels (no pixel size needed);
    otherwise the slide must know its pixel size (``open_slide(..., mpp=)``).
    ``chunk_size`` must divide ``region_size``: a region is encoded as a batch of chunks.
    """
    if region_size <= 0 or chunk_size <= 0 or region_size % chunk_size:
        raise ValueError(f"chunk_size {chunk_size} must divide region_size {region_size}")
    scale, read_level = _working_scale(slide, target_mpp)
    w0, h0 = slide.dimensions
    if read_level is not None:
        tw, th = slide.level_dimensions[read_level]
    else:
        tw, th = _ceil(w0 / scale[0]), _ceil(h0 / scale[1])
    cols = max(1, _ceil(tw / region_size))
    rows = max(1, _ceil(th / region_size))
    grid = RegionGrid(
        slide_dimensions=(w0, h0),
        target_dimensions=(tw, th),
        region_size=region_size,
        chunk_size=chunk_size,
        scale=scale,
        target_mpp=target_mpp,
        rows=rows,
        cols=cols,
        read_level=read_level,
        tissue_fractions=np.ones(rows * cols, dtype=np.float64),
    )
    if tissue is not None:
        fractions = tissue.fractions_in_boxes(grid.region_boxes())
        object.__setattr__(grid, "tissue_fractions", fractions)
    return grid


def _working_scale(slide: Slide, target_mpp: float | None) -> tuple[tuple[float, float], int | None]:
    """Level-0 pixels per target pixel, and the level to read directly when one matches."""
    if target_mpp is None:
        return (1.0, 1.0), 0
    if target_mpp <= 0:
        raise ValueError(f"target_mpp must be positive, got {target_mpp}")
    mx, my = slide.require_mpp()
    sx, sy = target_mpp / mx, target_mpp / my
    level = slide.best_level_for_downsample(min(sx, sy))
    ds = slide.level_downsamples[level]
    if abs(sx / ds - 1) <= MPP_TOLERANCE and abs(sy / ds - 1) <= MPP_TOLERANCE:
        return (ds, ds), level
    return (sx, sy), None


def _ceil(value: float) -> int:
    """Ceiling that ignores float noise (2.0000000001 -> 2)."""
    return math.ceil(value - _EPS)
