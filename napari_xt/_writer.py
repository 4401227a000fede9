"""npe2 writer: an xT classes layer saved as GeoJSON annotations that QuPath opens.

Only layers made by the napari-xt dock carry what the file needs (class names, where the
slide's level-0 pixels are in the world): the writer maps the layer's placement back to
level-0 pixels, so the polygons land where the classes were drawn (token squares, cut at the
slide's edge), whatever the user did to the layer's data.

Anything else (an ordinary labels layer) is refused with :class:`NotAnXTLayerError`, which
says why. It is deliberately not a ``ValueError``: napari swallows those from writers and
reports only that the plugin "is not a valid writer".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xt_core.errors import XTError
from xt_core.outputs.geojson import labels_as_heatmap, write_geojson


class NotAnXTLayerError(XTError):
    """The layer given to the GeoJSON writer was not made by the napari-xt dock."""


def write_xt_geojson(path: str, data: Any, meta: dict) -> list[str]:
    """Write an xT classes (labels) layer as a GeoJSON FeatureCollection; returns ``[path]``."""
    layer_meta = meta.get("metadata") or {}
    record = layer_meta.get("xt_result")
    classes = layer_meta.get("classes")
    if not record or not classes:
        name = meta.get("name") or "this layer"
        raise NotAnXTLayerError(
            f"'{name}' cannot be saved as xT GeoJSON: only the 'xT classes' layers that the napari-xt "
            "dock makes carry the class names and slide geometry the file needs (run 'xT slide analysis' "
            "first, or save this layer in another format)")
    scale = np.asarray(meta.get("scale", (1.0, 1.0)), dtype=float)[-2:]  # (row, col), world per layer pixel
    translate = np.asarray(meta.get("translate", (0.0, 0.0)), dtype=float)[-2:]
    placement = layer_meta.get("xt_placement")
    if placement:  # the slide layer's own placement: world = level-0 pixel * s + t
        s = np.asarray(placement["scale"], dtype=float)
        t = np.asarray(placement["translate"], dtype=float)
    else:
        mpp = record.get("mpp") or [1.0, 1.0]
        s, t = np.array([mpp[1], mpp[0]], dtype=float), np.zeros(2)
    pixel = scale / s  # level-0 pixels per layer pixel (row, col)
    # napari puts a layer pixel's centre (p - 1) / 2 level-0 pixels past the block's first pixel
    first = (translate - t) / s - (pixel - 1) / 2
    bounds = tuple(record["slide_dimensions"]) if record.get("slide_dimensions") else None
    write_geojson(path, labels_as_heatmap(data, len(classes)), classes, (pixel[1], pixel[0]),
                  origin=(first[1], first[0]), bounds=bounds, threshold=0.5)
    return [path]
