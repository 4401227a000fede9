"""Segmentation targets: annotations rasterised onto the token grid of a slide.

A model with ``t x t`` tokens per region and a segmentation head of upsample ``u`` predicts a
class for every cell of a ``(rows * t * u) x (cols * t * u)`` grid laid over the region grid
(see :func:`xt_core.inference.predict_slide`). Annotations are turned into one target per
cell, in the model's sequence order: regions in the order given, inside a region its tokens
row-major, inside a token its ``u x u`` sub-cells row-major, i.e. ``(L, u, u)`` matching the
head's ``seg_logits (1, L, u, u, C)``.

Two annotation formats:

* **GeoJSON** (``.geojson``/``.json``): polygons in level-0 pixel coordinates, as QuPath and
  most annotation tools export them: a FeatureCollection, a list of Features, a Feature or a
  bare geometry; Polygon (holes honoured) and MultiPolygon (GeometryCollections are
  searched; points and lines ignored). The class of a feature is ``properties.classification.name``
  (QuPath), else ``properties.label_name``, else ``properties.label`` (string or object with
  a ``name``); ``class_map`` renames (``{"Tumor": "tumour", "Ignore*": None}``; the key ``"*"``
  catches every other name, a value ``None`` drops the feature). Later features paint over
  earlier ones. A ring written as ``[[x, y], ...]`` instead of ``[[[x, y], ...]]`` is accepted.
* **A mask image** (PNG, TIFF, pyramidal TIFF, JPEG is refused as lossy): class indices
  ``0..C-1`` covering the whole slide at any resolution (its pixels are stretched over
  the slide's level-0 extent); ``255`` means not annotated.

Each cell is sampled on an ``oversample x oversample`` grid; its target is the majority class
of its annotated samples when at least ``min_coverage`` of them are annotated, else the
ignore index ``-100`` (which :func:`torch.nn.functional.cross_entropy` skips). Class
fractions per cell are returned too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from xt_core.errors import PathError
from xt_core.tokenize import RegionGrid

__all__ = [
    "IGNORE_INDEX",
    "AnnotationError",
    "TokenTargets",
    "blocks_to_sequence",
    "label_raster",
    "rasterize_annotation",
    "sequence_to_blocks",
]

IGNORE_INDEX = -100
UNANNOTATED = 255
_MASK_SUFFIXES = {".png", ".tif", ".tiff", ".bmp"}
_GEOJSON_SUFFIXES = {".geojson", ".json"}


class AnnotationError(PathError):
    """An annotation file that cannot be used (unreadable, unknown class, bad mask values)."""


@dataclass
class TokenTargets:
    """Per-cell targets of the chosen regions, in sequence order.

    ``labels`` ``(L, u, u)`` int64: class index, or ``-100`` (not annotated enough).
    ``fractions`` ``(L, u, u, C)`` float32: the fraction of the cell's samples of each class.
    """

    labels: np.ndarray
    fractions: np.ndarray

    @property
    def annotated(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


def sequence_to_blocks(seq: np.ndarray, tokens_per_side: int) -> np.ndarray:
    """``(n * t * t, u, u, ...)`` in sequence order -> per-region blocks ``(n, t * u, t * u, ...)``."""
    t = tokens_per_side
    u = seq.shape[1]
    rest = seq.shape[3:]
    n = seq.shape[0] // (t * t)
    x = seq.reshape(n, t, t, u, u, *rest)
    x = np.swapaxes(x, 2, 3)  # (n, t, u, t, u, ...)
    return x.reshape(n, t * u, t * u, *rest)


def blocks_to_sequence(blocks: np.ndarray, tokens_per_side: int) -> np.ndarray:
    """Inverse of :func:`sequence_to_blocks`."""
    t = tokens_per_side
    n, side = blocks.shape[:2]
    u = side // t
    rest = blocks.shape[3:]
    x = blocks.reshape(n, t, u, t, u, *rest)
    x = np.swapaxes(x, 2, 3)  # (n, t, t, u, u, ...)
    return np.ascontiguousarray(x.reshape(n * t * t, u, u, *rest))


def rasterize_annotation(
    path: str | os.PathLike,
    grid: RegionGrid,
    classes: Sequence[str],
    *,
    tokens_per_side: int,
    upsample: int = 1,
    indices: Sequence[int] | np.ndarray | None = None,
    class_map: Mapping[str, str | None] | None = None,
    oversample: int = 4,
    min_coverage: float = 0.5,
) -> TokenTargets:
    """Targets for the regions ``indices`` (raster indices; all when None) of ``grid``."""
    if oversample < 1:
        raise ValueError(f"oversample must be >= 1, got {oversample}")
    if not 0 < min_coverage <= 1:
        raise ValueError(f"min_coverage must be in (0, 1], got {min_coverage}")
    cells = tokens_per_side * upsample
    raster = label_raster(path, grid, classes, cells_per_region=cells, oversample=oversample, class_map=class_map)
    n_classes = len(classes)
    s = oversample
    h, w = raster.shape[0] // s, raster.shape[1] // s
    counts = np.zeros((h, w, n_classes), dtype=np.int32)
    blocks = raster.reshape(h, s, w, s)
    for c in range(n_classes):
        counts[..., c] = (blocks == c).sum(axis=(1, 3))
    idx = np.arange(grid.n_regions) if indices is None else np.asarray(indices, dtype=np.int64)
    rr, cc = np.divmod(idx, grid.cols)
    per_region = np.empty((len(idx), cells, cells, n_classes), dtype=np.int32)
    for k, (r, c) in enumerate(zip(rr, cc)):
        per_region[k] = counts[r * cells : (r + 1) * cells, c * cells : (c + 1) * cells]
    seq = blocks_to_sequence(per_region, tokens_per_side)  # (L, u, u, C)
    total = s * s
    annotated = seq.sum(axis=-1)
    labels = np.where(annotated >= min_coverage * total, seq.argmax(axis=-1), IGNORE_INDEX).astype(np.int64)
    return TokenTargets(labels=labels, fractions=(seq / total).astype(np.float32))


def label_raster(
    path: str | os.PathLike,
    grid: RegionGrid,
    classes: Sequence[str],
    *,
    cells_per_region: int,
    oversample: int = 4,
    class_map: Mapping[str, str | None] | None = None,
) -> np.ndarray:
    """Class index per sample ``(rows * k * s, cols * k * s)`` uint8 (255: none), k cells a region side.

    Sample ``(i, j)`` is the level-0 point at the centre of its box; boxes beyond the slide
    (the grid's padding) stay unannotated.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(path, "annotation file not found")
    if len(classes) >= UNANNOTATED:
        raise ValueError(f"at most {UNANNOTATED - 1} classes can be rasterised")
    k, s = cells_per_region, oversample
    shape = (grid.rows * k * s, grid.cols * k * s)
    rw, rh = grid.region_size_level0
    sample_w, sample_h = rw / (k * s), rh / (k * s)
    suffix = path.suffix.lower()
    if suffix in _GEOJSON_SUFFIXES:
        raster = _geojson_raster(path, shape, sample_w, sample_h, classes, class_map)
    elif suffix in _MASK_SUFFIXES:
        raster = _mask_raster(path, shape, sample_w, sample_h, grid.slide_dimensions, len(classes))
    else:
        raise AnnotationError(
            path, f"unsupported annotation type {suffix or '(none)'!r}: give GeoJSON (.geojson/.json) or a mask "
                  "image of class indices (.png/.tif)",
        )
    # padding beyond the slide is never annotated
    w0, h0 = grid.slide_dimensions
    inside_cols = int(np.ceil(w0 / sample_w - 0.5 - 1e-9))  # samples whose centre lies inside
    inside_rows = int(np.ceil(h0 / sample_h - 0.5 - 1e-9))
    raster[max(inside_rows, 0):, :] = UNANNOTATED
    raster[:, max(inside_cols, 0):] = UNANNOTATED
    return raster


# ----------------------------------------------------------------------------- GeoJSON


def _geojson_raster(
    path: Path, shape: tuple[int, int], sample_w: float, sample_h: float,
    classes: Sequence[str], class_map: Mapping[str, str | None] | None,
) -> np.ndarray:
    from skimage.draw import polygon as draw_polygon

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(path, f"not readable GeoJSON: {exc}") from None
    raster = np.full(shape, UNANNOTATED, dtype=np.uint8)
    lookup = {c: i for i, c in enumerate(classes)}
    folded = {c.casefold(): i for i, c in enumerate(classes)}
    for number, (props, geometry) in enumerate(_features(data, path), start=1):
        name = _class_name(props)
        index = _class_index(name, lookup, folded, class_map, path, number, classes)
        if index is None:
            continue
        for rings in _polygons(geometry, path, number):
            exterior = _to_samples(rings[0], sample_w, sample_h)
            if len(exterior) < 3:
                continue
            rr, cc = draw_polygon(exterior[:, 1], exterior[:, 0], shape)
            if not len(rr):
                continue
            if len(rings) == 1:
                raster[rr, cc] = index
                continue
            r0, c0 = rr.min(), cc.min()
            local = np.zeros((rr.max() - r0 + 1, cc.max() - c0 + 1), dtype=bool)
            local[rr - r0, cc - c0] = True
            for hole in rings[1:]:
                pts = _to_samples(hole, sample_w, sample_h)
                if len(pts) >= 3:
                    hr, hc = draw_polygon(pts[:, 1] - r0, pts[:, 0] - c0, local.shape)
                    local[hr, hc] = False
            lr, lc = np.nonzero(local)
            raster[lr + r0, lc + c0] = index
    return raster


def _features(data: Any, path: Path) -> Iterator[tuple[dict, dict]]:
    """(properties, geometry) of every feature, whatever the container."""
    if isinstance(data, list):
        for item in data:
            yield from _features(item, path)
        return
    if not isinstance(data, dict):
        raise AnnotationError(path, "not GeoJSON: expected an object or a list of features")
    kind = data.get("type")
    if kind == "FeatureCollection":
        for item in data.get("features") or []:
            yield from _features(item, path)
    elif kind == "Feature":
        if data.get("geometry"):
            yield (data.get("properties") or {}), data["geometry"]
    elif kind in ("Polygon", "MultiPolygon", "GeometryCollection", "Point", "MultiPoint", "LineString",
                  "MultiLineString"):
        yield {}, data
    else:
        raise AnnotationError(path, f"not GeoJSON: unknown object type {kind!r}")


def _class_name(props: dict) -> str | None:
    classification = props.get("classification")
    if isinstance(classification, dict) and classification.get("name"):
        return str(classification["name"])
    if isinstance(classification, str) and classification:
        return classification
    for key in ("label_name", "label", "class", "name"):
        value = props.get(key)
        if isinstance(value, dict) and value.get("name"):
            return str(value["name"])
        if isinstance(value, str) and value:
            return value
    return None


def _class_index(
    name: str | None, lookup: dict, folded: dict, class_map: Mapping[str, str | None] | None,
    path: Path, number: int, classes: Sequence[str],
) -> int | None:
    mapped: str | None = name
    if class_map:
        key = name if name is not None and name in class_map else "*" if "*" in class_map else None
        if key is not None:
            mapped = class_map[key]
            if mapped is None:  # mapped to None on purpose: drop the feature
                return None
    if mapped is None:
        raise AnnotationError(
            path, f"feature {number} has no class (properties.classification.name, label_name or label); "
                  "give one, or set annotation_class_map {'*': CLASS}",
        )
    if mapped in lookup:
        return lookup[mapped]
    if mapped.casefold() in folded:
        return folded[mapped.casefold()]
    raise AnnotationError(
        path, f"feature {number}: class {mapped!r} is not a class of the model ({', '.join(classes)}); "
              "map it with annotation_class_map",
    )


def _polygons(geometry: dict, path: Path, number: int) -> Iterator[list]:
    kind = geometry.get("type")
    coords = geometry.get("coordinates")
    try:
        if kind == "Polygon":
            yield _rings(coords)
        elif kind == "MultiPolygon":
            for poly in coords:
                yield _rings(poly)
        elif kind == "GeometryCollection":
            for g in geometry.get("geometries") or []:
                yield from _polygons(g, path, number)
    except (TypeError, ValueError, IndexError) as exc:
        raise AnnotationError(path, f"feature {number}: malformed {kind} coordinates ({exc})") from None


def _rings(coords) -> list:
    arr = coords
    # [[x, y], ...]: a single ring written without the ring list
    if arr and isinstance(arr[0], (list, tuple)) and arr[0] and isinstance(arr[0][0], (int, float)):
        return [np.asarray(arr, dtype=np.float64)[:, :2]]
    return [np.asarray(ring, dtype=np.float64).reshape(-1, len(ring[0]))[:, :2] for ring in arr if len(ring)]


def _to_samples(points: np.ndarray, sample_w: float, sample_h: float) -> np.ndarray:
    """Level-0 (x, y) -> sample coordinates in which sample centres sit on integers."""
    out = np.empty_like(points)
    out[:, 0] = points[:, 0] / sample_w - 0.5
    out[:, 1] = points[:, 1] / sample_h - 0.5
    return out


# ----------------------------------------------------------------------------- masks


def _mask_raster(
    path: Path, shape: tuple[int, int], sample_w: float, sample_h: float,
    slide_dims: tuple[int, int], n_classes: int,
) -> np.ndarray:
    w0, h0 = slide_dims
    mask = _read_mask(path, (shape[0] * sample_h / h0, shape[1] * sample_w / w0))
    mh, mw = mask.shape
    values = np.unique(mask)
    bad = values[(values >= n_classes) & (values != UNANNOTATED)]
    if len(bad):
        raise AnnotationError(
            path, f"mask values {', '.join(map(str, bad[:5].tolist()))} are not class indices 0..{n_classes - 1} "
                  f"(or {UNANNOTATED} for not annotated)",
        )
    # nearest mask pixel to every sample centre
    ys = ((np.arange(shape[0]) + 0.5) * sample_h) * mh / h0
    xs = ((np.arange(shape[1]) + 0.5) * sample_w) * mw / w0
    ri = np.floor(ys).astype(np.int64)
    ci = np.floor(xs).astype(np.int64)
    out = np.full(shape, UNANNOTATED, dtype=np.uint8)
    rows_ok = ri < mh
    cols_ok = ci < mw
    out[np.ix_(rows_ok, cols_ok)] = mask[np.ix_(ri[rows_ok], ci[cols_ok])].astype(np.uint8)
    return out


def _read_mask(path: Path, wanted: tuple[float, float]) -> np.ndarray:
    """The mask as a 2-D integer array; of a pyramidal TIFF, the coarsest level finer than ``wanted``."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                levels = list(tif.series[0].levels)
                chosen = levels[0]
                for level in levels:
                    shp = level.shape
                    if shp[0] >= wanted[0] and shp[1] >= wanted[1]:
                        chosen = level
                mask = chosen.asarray()
        else:
            from PIL import Image

            with Image.open(path) as im:
                if im.mode not in ("L", "P", "I", "I;16", "1"):
                    raise AnnotationError(path, f"a mask must be a one-channel image of class indices, got mode {im.mode}")
                mask = np.asarray(im)
    except AnnotationError:
        raise
    except Exception as exc:  # PIL and tifffile have many exception types
        raise AnnotationError(path, f"cannot read the mask image: {exc}") from None
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] in (1, 3, 4) and (mask.shape[-1] == 1 or np.all(mask[..., :1] == mask[..., 1:3])):
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise AnnotationError(path, f"a mask must be a one-channel image of class indices, got shape {mask.shape}")
    if not np.issubdtype(mask.dtype, np.integer) and mask.dtype != bool:
        raise AnnotationError(path, f"a mask must hold integer class indices, got {mask.dtype}")
    return mask.astype(np.int64)
