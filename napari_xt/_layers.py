"""The layers a run adds, placed exactly over the slide layer, as napari layer-data tuples.

Placement comes from the slide layer itself (its ``scale`` and ``translate``: world =
level-0 pixel x scale + translate), never from the slide's pixel size, so the overlay stays
on the slide whatever pixel size the run used (a slide without one, an override). napari puts
pixel centres at integer data coordinates: an overlay pixel covering ``s`` level-0 pixels
from ``o`` has its centre at ``o + (s - 1) / 2`` level-0 (napari) pixels.

The classes layer paints the model's tokens as the squares they are, and never past the
slide: tokens that lie wholly in the padding of the last regions are dropped, and the
tokens the slide's edge cuts are drawn ``k x k`` finer (``k`` up to 8, as the layer's size
allows) so that the paint stops within ``1/k`` of a token of the edge. Label 0 is transparent
(not analysed, outside the region of interest, or below the probability threshold); label
``i + 1`` is class ``i`` in the colour every output uses (:mod:`xt_core.outputs.colours`),
and hovering shows the class name (the layer's ``features``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from xt_core.outputs.colours import class_colour
from xt_core.outputs.heatmap_tiff import heatmap_labels

if TYPE_CHECKING:
    from xt_core.inference import SlideResult
    from xt_core.tissue import TissueMask

LayerData = tuple[Any, dict[str, Any], str]

#: Longest side the classes layer is drawn at when it splits tokens to stop at the slide's edge.
MAX_DISPLAY_SIDE = 2048
MAX_SPLIT = 8
REGION_COLOUR = (1.0, 1.0, 1.0, 1.0)
NOT_ANALYSED = "(none)"


@dataclass(frozen=True)
class Placement:
    """Where the slide layer puts level-0 pixels in the world: ``world = pixel * scale + translate``.

    ``scale`` and ``translate`` are (row, col); ``units`` the slide layer's (um, or pixels).
    """

    scale: tuple[float, float]
    translate: tuple[float, float]
    units: tuple[str, str] | None = None

    @classmethod
    def of_layer(cls, layer: Any) -> "Placement":
        units = tuple(str(u) for u in layer.units[-2:]) if getattr(layer, "units", None) is not None else None
        return cls(tuple(float(v) for v in layer.scale[-2:]), tuple(float(v) for v in layer.translate[-2:]), units)

    def overlay(self, pixel: tuple[float, float], origin: tuple[float, float] = (0.0, 0.0)) -> dict[str, Any]:
        """``scale``/``translate`` (and ``units``) of a layer whose pixel covers ``pixel`` = (w, h)
        level-0 pixels, its first pixel starting at level-0 ``origin`` = (x, y)."""
        (sy, sx), (ty, tx) = self.scale, self.translate
        pw, ph = pixel
        geometry: dict[str, Any] = {
            "scale": (ph * sy, pw * sx),
            "translate": (ty + (origin[1] + (ph - 1) / 2) * sy, tx + (origin[0] + (pw - 1) / 2) * sx),
        }
        if self.units is not None:
            geometry["units"] = self.units
        return geometry

    def world_to_level0(self, world: np.ndarray) -> np.ndarray:
        """World points ``(n, 2)`` (row, col) -> level-0 ``(n, 2)`` (x, y) in the engine's convention
        (pixel ``j`` covers ``[j, j + 1)``: half a pixel past napari's pixel centres)."""
        w = np.asarray(world, dtype=np.float64).reshape(-1, 2)
        rows = (w[:, 0] - self.translate[0]) / self.scale[0] + 0.5
        cols = (w[:, 1] - self.translate[1]) / self.scale[1] + 0.5
        return np.stack([cols, rows], axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {"scale": list(self.scale), "translate": list(self.translate)}


@dataclass(frozen=True)
class DisplayGrid:
    """A heatmap-like grid drawn over the slide: pixels of ``pixel`` level-0 pixels from ``origin``,
    cut to the slide and split ``factor x factor`` so the paint ends at the slide's edge."""

    shape: tuple[int, int]  # (rows, cols) of the grid: tokens, or regions
    pixel: tuple[float, float]  # (w, h) level-0 pixels per grid pixel
    origin: tuple[float, float]
    slide_dimensions: tuple[int, int]

    @property
    def on_slide(self) -> tuple[int, int]:
        """Rows and cols of the grid pixels that start on the slide (the rest is padding)."""
        w, h = self.slide_dimensions
        rows = min(self.shape[0], max(0, math.ceil((h - self.origin[1]) / self.pixel[1] - 1e-9)))
        cols = min(self.shape[1], max(0, math.ceil((w - self.origin[0]) / self.pixel[0] - 1e-9)))
        return rows, cols

    @property
    def factor(self) -> int:
        rows, cols = self.on_slide
        return int(max(1, min(MAX_SPLIT, MAX_DISPLAY_SIDE // max(rows, cols, 1))))

    @property
    def display_shape(self) -> tuple[int, int]:
        k = self.factor
        w, h = self.slide_dimensions
        rows, cols = self.on_slide
        sub_w, sub_h = self.pixel[0] / k, self.pixel[1] / k
        return (min(rows * k, math.ceil((h - self.origin[1]) / sub_h - 1e-9)),
                min(cols * k, math.ceil((w - self.origin[0]) / sub_w - 1e-9)))

    def expand(self, grid_values: np.ndarray) -> np.ndarray:
        """Values on the grid ``(rows, cols)`` -> the layer's array (split, cut at the slide)."""
        rows, cols = self.on_slide
        k = self.factor
        out = np.asarray(grid_values)[:rows, :cols]
        if k > 1:
            out = np.repeat(np.repeat(out, k, axis=0), k, axis=1)
        dr, dc = self.display_shape
        return np.ascontiguousarray(out[:dr, :dc])

    def geometry(self, placement: Placement) -> dict[str, Any]:
        k = self.factor
        return placement.overlay((self.pixel[0] / k, self.pixel[1] / k), self.origin)


# ----------------------------------------------------------------------------- classes
def class_labels(heatmap: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """``(rows, cols)`` labels: class ``i`` -> ``i + 1`` where analysed and its probability is at
    least ``threshold``; 0 elsewhere (skipped regions, outside the ROI, unsure tokens)."""
    labels = heatmap_labels(heatmap)
    if threshold > 0:
        with np.errstate(invalid="ignore"):
            sure = np.nan_to_num(np.nanmax(np.where(np.isnan(heatmap), -1.0, heatmap), axis=-1), nan=-1.0) >= threshold
        labels[~sure] = 0
    return labels


def class_colormap(n_classes: int) -> Any:
    """Label ``i + 1`` in class ``i``'s colour; 0 and any other value transparent."""
    from napari.utils.colormaps import DirectLabelColormap

    colours: dict[int | None, tuple[float, ...]] = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for i in range(n_classes):
        colours[i + 1] = tuple(v / 255 for v in class_colour(i)) + (1.0,)
    return DirectLabelColormap(color_dict=colours)


def class_features(classes: Sequence[str]) -> dict[str, list]:
    """The labels layer's ``features``: hovering a token shows ``class: <name>``."""
    return {"index": list(range(len(classes) + 1)), "class": [NOT_ANALYSED, *map(str, classes)]}


def classes_layer(labels: np.ndarray, grid: DisplayGrid, placement: Placement, classes: Sequence[str],
                  name: str, metadata: dict[str, Any], opacity: float = 0.5) -> LayerData:
    """The classes (labels) layer of token labels ``(rows, cols)``."""
    kwargs = {
        "name": name, "opacity": opacity, "colormap": class_colormap(len(classes)),
        "features": class_features(classes), "metadata": metadata, "blending": "translucent",
        **grid.geometry(placement),
    }
    return (grid.expand(labels).astype(np.uint8 if len(classes) < 255 else np.uint16), kwargs, "labels")


def probability_layers(result: "SlideResult", placement: Placement, name: str, metadata: dict[str, Any]) -> list[LayerData]:
    """One hidden image per class (``p(class)``, 0 where not analysed), on the tokens that start on the slide."""
    assert result.heatmap is not None
    grid = DisplayGrid(result.heatmap.shape[:2], result.token_size, result.origin, result.grid.slide_dimensions)
    rows, cols = grid.on_slide
    geometry = placement.overlay(result.token_size, result.origin)
    layers = []
    for i, cls in enumerate(result.classes):
        prob = np.nan_to_num(result.heatmap[:rows, :cols, i], nan=0.0)
        layers.append((prob, {"name": f"{name} p({cls})", "colormap": "magma", "opacity": 0.6, "visible": False,
                              "contrast_limits": (0.0, 1.0), "blending": "translucent",
                              "metadata": metadata, **geometry}, "image"))
    return layers


# ----------------------------------------------------------------------------- tissue, regions
def tissue_layer(tissue: "TissueMask", placement: Placement, name: str, metadata: dict[str, Any]) -> LayerData:
    """The tissue the run found (mask pixel = ``downsample`` level-0 pixels), hidden until asked for.

    An image layer (tissue 1, glass 0, additive green) rather than labels: it is added while
    the run starts, and an image of a 2048 px mask costs napari a fraction of what labels do.
    """
    kwargs = {"name": name, "colormap": "green", "contrast_limits": (0.0, 1.0), "opacity": 0.4, "visible": False,
              "blending": "additive", "metadata": metadata, **placement.overlay(tissue.downsample)}
    return (tissue.mask.astype(np.uint8), kwargs, "image")


def regions_layer(done: np.ndarray, grid: DisplayGrid, placement: Placement, name: str,
                  metadata: dict[str, Any]) -> LayerData:
    """Outlines of the regions analysed so far (``done``: (rows, cols) bool).

    What a classification-only model has to draw besides its slide label: it shows where the
    run looked. Each region gets its own label (its raster index + 1) so each is outlined.
    """
    from napari.utils.colormaps import DirectLabelColormap

    colormap = DirectLabelColormap(color_dict={None: REGION_COLOUR, 0: (0.0, 0.0, 0.0, 0.0)})
    ids = np.where(done, np.arange(done.size, dtype=np.int32).reshape(done.shape) + 1, 0)
    kwargs = {"name": name, "colormap": colormap, "opacity": 0.9, "metadata": metadata, **grid.geometry(placement)}
    return (grid.expand(ids), kwargs, "labels")
