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
from xt_core.slide.resample import whole_factor

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
    is within tolerance of the target, or of the target divided by a whole number k (a 40x
    level for a 20x model: k = 2), the grid snaps to that level (``read_level``,
    ``read_factor`` k; scale is its downsample times k) so regions tile it exactly, k x k
    level pixels to a target pixel, shrunk by a box filter; otherwise each region is
    resampled (Lanczos).
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
    read_factor: int = 1  # level pixels per target pixel along each side, when read_level is set

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
        return Region(
            index=index,
            row=row,
            col=col,
            box=(col * rs * sx, row * rs * sy, (col + 1) * rs * sx, (row + 1) * rs * sy),
            valid_size=self._valid_size(row, col),
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
        if self.read_level is not None:
            return self._read_run(slide, region.index, 1)[0]
        rs = self.region_size
        pixels = slide.read_region_at_mpp((region.box[0], region.box[1]), (rs, rs), self.target_mpp)
        return self._blank_padding(pixels, region.index)

    def read_many(self, slide: Slide, indices: np.ndarray) -> np.ndarray:
        """Pixels ``(N, R, R, 3)`` of the regions ``indices`` (raster order), equal to :meth:`read` each.

        On a snapped grid, neighbours in a row are read as one strip: one call into the reader
        library, each source tile decoded once for the strip instead of once per region that
        touches it, and one box-filter pass.
        """
        indices = np.asarray(indices, dtype=np.int64)
        rs = self.region_size
        out = np.empty((len(indices), rs, rs, 3), dtype=np.uint8)
        if self.read_level is None:
            for k, index in enumerate(indices):
                out[k] = self.read(slide, int(index))
            return out
        start = 0
        while start < len(indices):
            stop = start + 1  # extend the run while the next region is the right-hand neighbour in this row
            while (stop < len(indices) and indices[stop] == indices[stop - 1] + 1
                   and indices[stop] % self.cols != 0):
                stop += 1
            out[start:stop] = self._read_run(slide, int(indices[start]), stop - start)
            start = stop
        return out

    def _read_run(self, slide: Slide, first: int, n: int) -> np.ndarray:
        """``n`` regions from ``first`` along one row of a snapped grid, as ``(n, R, R, 3)``.

        The regions that lie wholly inside the level and those that cross its edge are read as
        two strips: how a region's pixels are made (libjpeg's scaled decode inside, a full
        decode and a box filter at the edge) then depends on the region alone, never on which
        neighbours share its batch.
        """
        rs, k = self.region_size, self.read_factor
        row, col = divmod(first, self.cols)
        lw, lh = slide.level_dimensions[self.read_level]
        span = rs * k  # level pixels per region side
        inside = 0 if (row + 1) * span > lh else max(0, min(n, lw // span - col))
        parts = [self._read_strip(slide, row, col, inside)] if inside else []
        if inside < n:
            parts.append(self._read_strip(slide, row, col + inside, n - inside))
        regions = np.concatenate(parts) if len(parts) > 1 else parts[0]
        for j in range(n):
            self._blank_padding(regions[j], first + j)
        return regions

    def _read_strip(self, slide: Slide, row: int, col: int, n: int) -> np.ndarray:
        rs, k = self.region_size, self.read_factor
        ds = slide.level_downsamples[self.read_level]
        strip = slide.read_region_shrunk((col * rs * k * ds, row * rs * k * ds), self.read_level,
                                         (n * rs * k, rs * k), k)  # (rs, n * rs, 3)
        return np.ascontiguousarray(strip.reshape(rs, n, rs, 3).transpose(1, 0, 2, 3))

    def _valid_size(self, row: int, col: int) -> tuple[int, int]:
        """(width, height) of the region at (row, col) that lies on the slide, in target pixels."""
        rs = self.region_size
        return min(rs, self.target_dimensions[0] - col * rs), min(rs, self.target_dimensions[1] - row * rs)

    def _blank_padding(self, pixels: np.ndarray, index: int) -> np.ndarray:
        """White beyond the slide's edge (whole target pixels past ``target_dimensions``)."""
        rs = self.region_size
        vw, vh = self._valid_size(*divmod(index, self.cols))
        if vw < rs or vh < rs:
            if not pixels.flags.writeable:
                pixels = pixels.copy()
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
    scale, read_level, factor = _working_scale(slide, target_mpp)
    w0, h0 = slide.dimensions
    if read_level is not None:
        lw, lh = slide.level_dimensions[read_level]
        tw, th = _ceil(lw / factor), _ceil(lh / factor)
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
        read_factor=factor,
    )
    if tissue is not None:
        fractions = tissue.fractions_in_boxes(grid.region_boxes())
        object.__setattr__(grid, "tissue_fractions", fractions)
    return grid


def _working_scale(
    slide: Slide, target_mpp: float | None
) -> tuple[tuple[float, float], int | None, int]:
    """Level-0 pixels per target pixel, the level to read directly when one matches (or a whole
    multiple of it does), and that multiple."""
    if target_mpp is None:
        return (1.0, 1.0), 0, 1
    if target_mpp <= 0:
        raise ValueError(f"target_mpp must be positive, got {target_mpp}")
    mx, my = slide.require_mpp()
    sx, sy = target_mpp / mx, target_mpp / my
    level = slide.best_level_for_downsample(min(sx, sy))
    ds = slide.level_downsamples[level]
    k = whole_factor(sx / ds, MPP_TOLERANCE)
    if k is not None and whole_factor(sy / ds, MPP_TOLERANCE) == k:
        return (ds * k, ds * k), level, k
    return (sx, sy), None, 1


def _ceil(value: float) -> int:
    """Ceiling that ignores float noise (2.0000000001 -> 2)."""
    return math.ceil(value - _EPS)
