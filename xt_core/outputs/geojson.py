"""The segmentation as GeoJSON polygons QuPath opens as annotations (level-0 pixel coordinates).

For each class, the heatmap pixels whose probability is above ``threshold`` (skipped,
background regions never are) are traced into polygons:

* each 4-connected group of pixels becomes one polygon, with its holes, traced along the
  pixel edges: a token is an axis-aligned square of level-0 pixels, so the polygons are exactly
  the blocks a viewer paints (napari shows the same shapes as QuPath; an isolated token is a
  square). Where two pixels of one group meet only at a corner the outline turns there so
  that it passes each corner once: every ring is simple, and rings (a hole and its exterior,
  or two polygons of a class) meet at most at single corner points, as OGC geometry allows. The simplification drops only
  vertices on a straight line between their neighbours (lossless);
* coordinates go to level-0 pixels through the heatmap geometry (``origin + index *
  token_size``), and the parts of the last regions that pad the slide are cut off at the
  slide's edge: every coordinate is inside ``[0, width] x [0, height]``;
* exterior rings run counter-clockwise and holes clockwise (RFC 7946, in the x/y numbers), and
  every ring is closed (its last point repeats the first).

Each class with any polygon is one Feature (a MultiPolygon), with the properties QuPath
reads: ``objectType: "annotation"`` and ``classification: {"name", "color"}`` (the colour of
:mod:`xt_core.outputs.colours`). QuPath imports it with File > Import objects (or by dropping
the file on the viewer) as one annotation per class.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xt_core.outputs.atomic import atomic_path
from xt_core.outputs.colours import class_colour

Ring = list[list[float]]


def mask_polygons(
    mask: np.ndarray,
    token_size: tuple[float, float] = (1.0, 1.0),
    origin: tuple[float, float] = (0.0, 0.0),
    bounds: tuple[float, float] | None = None,
    decimals: int = 3,
) -> list[list[Ring]]:
    """Polygons ``[exterior, *holes]`` of a boolean ``(rows, cols)`` mask, in level-0 pixels.

    Mask pixel (i, j) covers ``origin + (j, i) * token_size`` to ``origin + (j + 1, i + 1) *
    token_size``. ``bounds`` (level-0 width, height) clips the polygons to the slide: pixels
    that start beyond it are dropped and the rest are cut at the edge.
    """
    from scipy import ndimage as ndi

    mask = np.asarray(mask, dtype=bool)
    tw, th = float(token_size[0]), float(token_size[1])
    ox, oy = float(origin[0]), float(origin[1])
    if bounds is not None:
        mask = mask.copy()
        first_col_out = max(0, int(np.ceil((bounds[0] - ox) / tw - 1e-9)))
        first_row_out = max(0, int(np.ceil((bounds[1] - oy) / th - 1e-9)))
        mask[:, first_col_out:] = False
        mask[first_row_out:, :] = False
    labels, n = ndi.label(mask)  # 4-connected: pixels meeting only at a corner are separate polygons
    polygons: list[list[Ring]] = []
    for k, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        sub = np.pad(labels[box] == k, 1).astype(np.float32)
        rings = _component_rings(sub)
        if not rings:
            continue
        r0, c0 = box[0].start - 1, box[1].start - 1  # the padding shifts indices by one
        polygon: list[Ring] = []
        for idx, ring in enumerate(rings):
            # ring point (row, col) is the top-left corner of pixel (row, col) of the padded box
            xs = ox + (ring[:, 1] + c0) * tw
            ys = oy + (ring[:, 0] + r0) * th
            pts = np.stack([xs, ys], axis=1)
            pts = np.round(pts, decimals)
            if bounds is not None:  # rounded down, so the rounded coordinates stay inside too
                scale = 10.0**decimals
                pts[:, 0] = np.clip(pts[:, 0], 0.0, np.floor(float(bounds[0]) * scale) / scale)
                pts[:, 1] = np.clip(pts[:, 1], 0.0, np.floor(float(bounds[1]) * scale) / scale)
            pts = _drop_degenerate(pts)
            if len(pts) < 3:
                if idx == 0:
                    break  # no area left: drop the polygon
                continue
            area = _signed_area(pts)
            exterior = idx == 0
            if (area < 0) == exterior:  # exterior counter-clockwise, holes clockwise
                pts = pts[::-1]
            polygon.append([[float(x), float(y)] for x, y in pts] + [[float(pts[0, 0]), float(pts[0, 1])]])
        if polygon:
            polygons.append(polygon)
    return polygons


def heatmap_features(
    heatmap: np.ndarray,
    classes: Sequence[str],
    token_size: tuple[float, float],
    *,
    origin: tuple[float, float] = (0.0, 0.0),
    bounds: tuple[float, float] | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """A GeoJSON FeatureCollection: per class, the polygons where its probability > ``threshold``."""
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 3 or heat.shape[-1] != len(classes):
        raise ValueError(f"heatmap must be (rows, cols, {len(classes)}), got {heat.shape}")
    features = []
    for i, name in enumerate(classes):
        with np.errstate(invalid="ignore"):
            mask = heat[..., i] > threshold  # NaN (skipped) is never above
        polygons = mask_polygons(mask, token_size, origin, bounds)
        if not polygons:
            continue
        r, g, b = class_colour(i)
        features.append({
            "type": "Feature",
            "geometry": {"type": "MultiPolygon", "coordinates": polygons},
            "properties": {
                "objectType": "annotation",
                "name": str(name),
                "classification": {"name": str(name), "color": [r, g, b]},
                "isLocked": False,
                "threshold": float(threshold),
                "token_pixels": int(mask.sum()),
            },
        })
    return {"type": "FeatureCollection", "features": features}


def labels_as_heatmap(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Class labels ``(rows, cols)`` (0: none, ``k + 1``: class k, as napari's labels layers hold
    them) as the one-hot ``(rows, cols, n_classes)`` heatmap :func:`heatmap_features` traces at 0.5."""
    labels = np.asarray(labels)
    return np.stack([labels == k + 1 for k in range(n_classes)], axis=-1).astype(np.float32)


def write_geojson(
    path: str | os.PathLike,
    heatmap: np.ndarray,
    classes: Sequence[str],
    token_size: tuple[float, float],
    *,
    origin: tuple[float, float] = (0.0, 0.0),
    bounds: tuple[float, float] | None = None,
    threshold: float = 0.5,
) -> Path:
    """Write :func:`heatmap_features` to ``path`` atomically; returns the path."""
    collection = heatmap_features(heatmap, classes, token_size, origin=origin, bounds=bounds, threshold=threshold)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(collection, separators=(",", ":")) + "\n", encoding="utf-8")
    return Path(path)


# ----------------------------------------------------------------------------- internals
def _component_rings(sub: np.ndarray) -> list[np.ndarray]:
    """Rings of one 4-connected component (zero-padded): the exterior first, then the holes.

    Points are pixel corners ``(row, col)`` in ``sub``'s index space (corner ``(r, c)`` is the
    top-left of pixel ``(r, c)``), simplified losslessly, not closed.
    """
    rings = []
    for ring in _trace_pixel_edges(np.asarray(sub, dtype=bool)):
        ring = _drop_collinear_exact(ring)
        if len(ring) >= 3:
            rings.append(ring)
    rings.sort(key=lambda r: -abs(_signed_area(r[:, ::-1])))  # the exterior encloses the rest
    return rings


# Unit steps (d_col, d_row) of the four edge directions; a turn to the right (on screen, rows
# growing downwards) takes (dc, dr) to (-dr, dc).
_STEPS = ((1, 0), (0, 1), (-1, 0), (0, -1))


def _trace_pixel_edges(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines along the pixel edges of a zero-bordered mask, as ``(n, 2)`` (row, col) corners.

    Every edge between a pixel of the mask and one outside it is directed so that the mask is
    on the same side, which makes each corner the start of as many edges as end there (one or
    two). A corner where two mask pixels meet only diagonally (a saddle) starts two: taking the
    right turn there joins the two pixels' outlines, so a ring never passes a corner twice and
    the outside pixels stay apart. Rings meet other rings at most at such corners.
    """
    rows, cols = mask.shape
    inside = mask[1:-1, 1:-1]
    r, c = np.nonzero(inside)
    r, c = r + 1, c + 1
    starts, steps = [], []
    # a side of pixel (r, c) that faces an outside pixel, as (start corner, step)
    for (dr, dc), (sr, sc), step in (
        ((-1, 0), (0, 1), 2),   # top: from its top-right corner leftwards
        ((1, 0), (1, 0), 0),    # bottom: from its bottom-left corner rightwards
        ((0, -1), (0, 0), 1),   # left: from its top-left corner downwards
        ((0, 1), (1, 1), 3),    # right: from its bottom-right corner upwards
    ):
        facing = ~mask[r + dr, c + dc]
        starts.append(np.stack([r[facing] + sr, c[facing] + sc], axis=1))
        steps.append(np.full(int(facing.sum()), step))
    start = np.concatenate(starts).astype(np.int64)
    step = np.concatenate(steps)
    n = len(start)
    if n == 0:
        return []
    width = cols + 1
    vertex = start[:, 0] * width + start[:, 1]
    # outgoing edges by start corner: at most two (a saddle), found by (corner, step)
    by_start = {(int(v), int(s)): k for k, (v, s) in enumerate(zip(vertex, step))}
    first_out: dict[int, int] = {}
    second_out: dict[int, int] = {}
    for k, v in enumerate(vertex.tolist()):
        (second_out if v in first_out else first_out)[v] = k
    used = np.zeros(n, dtype=bool)
    rings = []
    for seed in range(n):
        if used[seed]:
            continue
        ring, k = [], seed
        while not used[k]:
            used[k] = True
            ring.append(start[k])
            dc, dr = _STEPS[step[k]]
            end = (int(start[k, 0]) + dr) * width + int(start[k, 1]) + dc
            if end in second_out:  # a saddle: turn right
                k = by_start[(end, _STEPS.index((-dr, dc)))]
            else:
                k = first_out[end]
        rings.append(np.asarray(ring, dtype=np.float64))
    return rings


def _drop_collinear_exact(ring: np.ndarray) -> np.ndarray:
    """Remove vertices on the straight line between their neighbours (coordinates are halves).

    Computed on exact integers (twice the coordinates). Removing all such vertices at once is
    safe: two neighbouring ones lie on one common line, whose end vertices stay.
    """
    pts = np.round(np.asarray(ring) * 2).astype(np.int64)
    while len(pts) > 3:
        prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
        cross = (pts[:, 0] - prev[:, 0]) * (nxt[:, 1] - prev[:, 1]) - (pts[:, 1] - prev[:, 1]) * (nxt[:, 0] - prev[:, 0])
        if (cross != 0).all():
            break
        pts = pts[cross != 0]
    return pts / 2.0


def _drop_degenerate(pts: np.ndarray) -> np.ndarray:
    """After clipping: drop repeated points and points whose neighbours share its x or its y."""
    changed = True
    while changed and len(pts) >= 3:
        changed = False
        same = np.all(pts == np.roll(pts, -1, axis=0), axis=1)
        if same.any():
            pts = pts[~same]
            changed = True
            continue
        prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
        on_line = ((prev[:, 0] == pts[:, 0]) & (pts[:, 0] == nxt[:, 0])) | (
            (prev[:, 1] == pts[:, 1]) & (pts[:, 1] == nxt[:, 1]))
        if on_line.any():
            pts = np.delete(pts, int(np.flatnonzero(on_line)[0]), axis=0)
            changed = True
    return pts


def _signed_area(pts: np.ndarray) -> float:
    """Shoelace area of an open ring of (x, y) points; positive = counter-clockwise (y up)."""
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))
