"""Saving the result shown in the dock through the engine's own writers.

The files are the ones ``xt-slide segment`` writes (:mod:`xt_core.outputs`), of what napari
shows: the JSON record (with the region of interest and the display threshold), the
per-class probability heatmap as a pyramidal OME-TIFF, and the classes as QuPath GeoJSON
annotations, traced from the labels on screen (threshold and region of interest included),
so QuPath shows the same token squares as napari.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_xt._layers import class_labels
from xt_core.outputs.records import slide_stem

if TYPE_CHECKING:
    from napari_xt._job import RunOutcome


@dataclass
class ShownResult:
    """The run on screen: its outcome and the display threshold the user set."""

    outcome: "RunOutcome"
    threshold: float = 0.0

    @property
    def result(self) -> Any:
        return self.outcome.result

    @property
    def stem(self) -> str:
        return slide_stem(self.result.slide)

    def token_labels(self) -> np.ndarray:
        """Labels per token as displayed (0: nothing shown there)."""
        return class_labels(self.result.heatmap, self.threshold)

    def record(self) -> dict[str, Any]:
        from xt_core.outputs.records import slide_record

        result, request = self.result, self.outcome.request
        record = slide_record(result, self.outcome.model)
        record["slide_dimensions"] = list(result.grid.slide_dimensions)
        record["region_of_interest"] = {
            "scope": request.scope,
            "polygons_px": [np.round(p, 3).tolist() for p in request.polygons] if request.polygons else None,
        }
        record["settings"] = request.settings.to_dict()
        record["display_threshold"] = self.threshold
        return record


def export_record(shown: ShownResult, path: str | os.PathLike) -> Path:
    """The JSON record of the run (model, probabilities, grid, timings, region of interest)."""
    from xt_core.outputs.atomic import write_json

    return write_json(path, shown.record())


def export_heatmap(shown: ShownResult, path: str | os.PathLike) -> Path:
    """Per-class probabilities as a pyramidal OME-TIFF with the physical token size."""
    from xt_core.outputs.heatmap_tiff import write_heatmap_tiff

    r = _segmentation(shown)
    return write_heatmap_tiff(path, r.heatmap, r.classes, r.token_size, r.mpp, origin=r.origin, name=shown.stem)


def export_geojson(shown: ShownResult, path: str | os.PathLike) -> Path:
    """The displayed classes as QuPath annotations (level-0 pixels, token edges, cut at the slide)."""
    from xt_core.outputs.geojson import labels_as_heatmap, write_geojson

    r = _segmentation(shown)
    onehot = labels_as_heatmap(shown.token_labels(), len(r.classes))
    return write_geojson(path, onehot, r.classes, r.token_size, origin=r.origin,
                         bounds=r.grid.slide_dimensions, threshold=0.5)


def _segmentation(shown: ShownResult) -> Any:
    if shown.result.heatmap is None:
        raise ValueError("this model only classifies: there is no heatmap to save")
    return shown.result
