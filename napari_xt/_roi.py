"""What the user points at, as level-0 polygons: the shapes of a Shapes layer, or the field of view.

Shapes are drawn in world coordinates (micrometres when the slide has a pixel size); each
vertex goes through its own layer's transform to the world and then through the slide
layer's placement to level-0 pixels, so a rectangle drawn over some tissue selects exactly
the regions under it (:func:`xt_core.roi.regions_in_shapes`). Rectangles and polygons are
used as drawn, ellipses as 64-gons; lines and paths enclose nothing and are left out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_xt._layers import Placement
from xt_core.roi import rectangle

AREA_SHAPES = ("rectangle", "polygon", "ellipse")
ELLIPSE_VERTICES = 64


def shapes_polygons(shapes: Any, placement: Placement) -> list[np.ndarray]:
    """Level-0 ``(x, y)`` outlines of every area shape of a napari Shapes layer."""
    polygons = []
    for i in range(len(shapes.data)):
        kind = shapes.shape_type[i]
        if kind not in AREA_SHAPES:
            continue
        data = np.asarray(shapes.data[i], dtype=np.float64)
        world = np.array([shapes.data_to_world(v) for v in data])[:, -2:]
        if kind == "ellipse":
            world = _ellipse_outline(world)
        polygons.append(placement.world_to_level0(world))
    return polygons


def view_polygon(viewer: Any, placement: Placement) -> np.ndarray:
    """The level-0 box the canvas shows now (the field of view)."""
    top_left, bottom_right = _canvas_corners_world(viewer)
    (x0, y0), (x1, y1) = placement.world_to_level0(np.stack([top_left, bottom_right]))
    return rectangle(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def _canvas_corners_world(viewer: Any) -> tuple[np.ndarray, np.ndarray]:
    """World (row, col) of the canvas's top-left and bottom-right corners.

    From public state only (a plugin sees the viewer through napari's public-only proxy): the
    camera's centre and zoom (canvas pixels per world unit) and the canvas size.
    """
    scene = getattr(viewer, "scene", None)
    camera = scene.camera if scene is not None else viewer.camera  # napari >= 0.9 moved it to the scene
    size = np.asarray(viewer.canvas.size, dtype=np.float64)[-2:]  # (height, width) in canvas pixels
    centre = np.asarray(camera.center, dtype=np.float64)[-2:]
    half = size / 2 / float(camera.zoom)
    return centre - half, centre + half


def _ellipse_outline(corners: np.ndarray) -> np.ndarray:
    """An ellipse given, as napari stores it, by the four corners of its (possibly rotated) box."""
    centre = corners.mean(axis=0)
    a = (corners[1] - corners[0]) / 2
    b = (corners[3] - corners[0]) / 2
    angle = np.linspace(0.0, 2 * np.pi, ELLIPSE_VERTICES, endpoint=False)
    return centre + np.cos(angle)[:, None] * a + np.sin(angle)[:, None] * b
