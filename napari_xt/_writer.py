"""npe2 writer: an xT classes layer saved as GeoJSON annotations that QuPath opens.

Only layers made by the napari-xt widget carry what the file needs (class names, the slide's
pixel size): the writer maps the layer's world placement back to level-0 pixels, so the
polygons land where the heatmap was drawn, whatever the user did to the layer's data.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from xt_core.outputs.atomic import atomic_path
from xt_core.outputs.geojson import heatmap_features


def write_xt_geojson(path: str, data: Any, meta: dict) -> list[str]:
    """Write an xT classes (labels) layer as a GeoJSON FeatureCollection; returns ``[path]``."""
    layer_meta = meta.get("metadata") or {}
    record = layer_meta.get("xt_result")
    classes = layer_meta.get("classes")
    if not record or not classes:
        raise ValueError("only the 'xT classes' layers made by the napari-xt widget can be saved as GeoJSON")
    mpp = record.get("mpp") or [1.0, 1.0]
    scale = np.asarray(meta.get("scale", (1.0, 1.0)), dtype=float)[-2:]  # (row, col) in world units
    translate = np.asarray(meta.get("translate", (0.0, 0.0)), dtype=float)[-2:]
    token = (scale[1] / mpp[0], scale[0] / mpp[1])  # level-0 pixels per heatmap pixel (x, y)
    # the layer's translate puts pixel centres (s-1)/2 level-0 pixels past the block's corner
    origin = (translate[1] / mpp[0] - (token[0] - 1) / 2, translate[0] / mpp[1] - (token[1] - 1) / 2)
    labels = np.asarray(data)
    onehot = np.stack([(labels == i + 1) for i in range(len(classes))], axis=-1).astype(np.float32)
    bounds = tuple(record["slide_dimensions"]) if record.get("slide_dimensions") else None
    collection = heatmap_features(onehot, classes, token, origin=origin, bounds=bounds, threshold=0.5)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(collection, separators=(",", ":")) + "\n", encoding="utf-8")
    return [path]
