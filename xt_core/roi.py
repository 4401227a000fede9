"""Regions of interest: which grid regions (or heatmap tokens) lie under drawn shapes or a view box.

A region-of-interest run encodes only the regions a user points at (the shapes drawn in
napari, the current field of view), so the context encoder reads exactly those and the slide
classification is the ROI's. Pass :func:`regions_in_shapes` to
:func:`xt_core.inference.predict_slide` as ``select=``.

Everything is in level-0 pixel coordinates ``(x, y)``, where pixel ``(i, j)`` covers
``[j, j + 1) x [i, i + 1)`` (the engine's convention; napari puts pixel centres at integers,
so a napari data coordinate is this minus 0.5). A box is *under* a polygon when the two
overlap with positive area: touching an edge or a corner does not count, so a rectangle drawn
exactly along region borders selects the regions inside it and not their neighbours.
Polygons may be concave; their edges may cross (the even-odd rule decides inside).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from xt_core.tokenize import RegionGrid

__all__ = ["boxes_in_polygons", "rectangle", "regions_in_shapes", "token_boxes", "tokens_in_shapes"]

# Boxes tested against one polygon at a time: bounds the (boxes x edges) work arrays to a few MB.
_CHUNK = 2048


def rectangle(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """The polygon ``(4, 2)`` of an axis-aligned box (a view box, a drawn rectangle)."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def boxes_in_polygons(boxes: ArrayLike, polygons: Sequence[ArrayLike]) -> np.ndarray:
    """``(n,)`` bool: which ``(x0, y0, x1, y1)`` boxes overlap any polygon with positive area.

    A box overlaps a polygon exactly when an edge of the polygon passes through the box's
    open interior, or when the box's centre is inside the polygon (then the whole box is, as
    no edge enters it). Polygons are ``(m, 2)`` arrays of ``(x, y)`` vertices, closed or not;
    ones with fewer than three distinct vertices (lines, points) select nothing.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    chosen = np.zeros(len(b), dtype=bool)
    for polygon in polygons:
        pts = _open_ring(polygon)
        if pts is None:
            continue
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        near = np.flatnonzero((b[:, 0] < hi[0]) & (b[:, 2] > lo[0]) & (b[:, 1] < hi[1]) & (b[:, 3] > lo[1])
                              & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]))
        for start in range(0, len(near), _CHUNK):
            idx = near[start : start + _CHUNK]
            sub = b[idx]
            centres = np.stack([(sub[:, 0] + sub[:, 2]) / 2, (sub[:, 1] + sub[:, 3]) / 2], axis=1)
            chosen[idx] |= _edges_enter_boxes(sub, pts) | _points_in_polygon(centres, pts)
    return chosen


def regions_in_shapes(grid: "RegionGrid", polygons: Sequence[ArrayLike]) -> np.ndarray:
    """``(n_regions,)`` bool in raster order: the regions whose part on the slide overlaps a polygon.

    The white padding of the last row and column of regions does not count: a shape drawn
    below the slide selects nothing.
    """
    boxes = grid.region_boxes()
    w, h = grid.slide_dimensions
    boxes[:, 2] = np.minimum(boxes[:, 2], w)
    boxes[:, 3] = np.minimum(boxes[:, 3], h)
    return boxes_in_polygons(boxes, polygons)


def token_boxes(shape: tuple[int, int], token_size: tuple[float, float],
                origin: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Level-0 boxes ``(rows * cols, 4)`` of a heatmap's pixels, raster order."""
    rows, cols = shape
    r, c = np.divmod(np.arange(rows * cols), cols)
    tw, th = float(token_size[0]), float(token_size[1])
    x0, y0 = origin[0] + c * tw, origin[1] + r * th
    return np.stack([x0, y0, x0 + tw, y0 + th], axis=1)


def tokens_in_shapes(shape: tuple[int, int], token_size: tuple[float, float], polygons: Sequence[ArrayLike],
                     origin: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """``(rows, cols)`` bool: the heatmap pixels (tokens) that overlap a polygon.

    An ROI run encodes whole regions; this says which of their tokens the user pointed at,
    so the result can be shown (and exported) exactly over the drawn shapes.
    """
    return boxes_in_polygons(token_boxes(shape, token_size, origin), polygons).reshape(shape)


# ----------------------------------------------------------------------------- internals
def _open_ring(polygon: ArrayLike) -> np.ndarray | None:
    """``(m, 2)`` float vertices without a closing repeat, or None without any area."""
    pts = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    if len(pts) > 1 and np.array_equal(pts[0], pts[-1]):
        pts = pts[:-1]
    if len(pts) < 3 or not np.isfinite(pts).all():
        return None
    x, y = pts[:, 0], pts[:, 1]
    if np.dot(x, np.roll(y, -1)) == np.dot(np.roll(x, -1), y):  # zero area: a line or a point
        return None
    return pts


def _edges_enter_boxes(boxes: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: some polygon edge has points in a box's open interior (Liang-Barsky).

    Edge ``k`` is ``p_k + t (p_{k+1} - p_k)``, ``t`` in [0, 1]; it is inside the open slab
    ``x0 < x < x1`` for an open interval of ``t`` (all or nothing for a vertical edge), the
    same for ``y``: the edge enters the box when the three intervals share more than a point.
    """
    p = pts[None, :, :]  # (1, m, 2)
    d = np.roll(pts, -1, axis=0)[None] - p
    lo_t = np.zeros((len(boxes), len(pts)))
    hi_t = np.ones((len(boxes), len(pts)))
    for axis in (0, 1):
        b0 = boxes[:, None, axis]
        b1 = boxes[:, None, axis + 2]
        pa, da = p[..., axis], d[..., axis]
        moving = da != 0
        with np.errstate(divide="ignore", invalid="ignore"):
            t0 = np.where(moving, (b0 - pa) / np.where(moving, da, 1.0), -np.inf)
            t1 = np.where(moving, (b1 - pa) / np.where(moving, da, 1.0), np.inf)
        still_inside = (b0 < pa) & (pa < b1)
        enter = np.where(moving, np.minimum(t0, t1), np.where(still_inside, -np.inf, np.inf))
        leave = np.where(moving, np.maximum(t0, t1), np.where(still_inside, np.inf, -np.inf))
        lo_t = np.maximum(lo_t, enter)
        hi_t = np.minimum(hi_t, leave)
    return (lo_t < hi_t).any(axis=1)


def _points_in_polygon(points: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Even-odd rule for many points at once: a horizontal ray to +x counts edge crossings."""
    x, y = points[:, None, 0], points[:, None, 1]
    x0, y0 = pts[None, :, 0], pts[None, :, 1]
    x1, y1 = np.roll(pts[:, 0], -1)[None], np.roll(pts[:, 1], -1)[None]
    straddles = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return (np.count_nonzero(straddles & (x < x_at), axis=1) % 2).astype(bool)
