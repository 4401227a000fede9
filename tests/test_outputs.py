"""Output writers: heatmap OME-TIFF, GeoJSON polygons, PNG preview, records and summary CSV.

The geometry helpers here (``assert_valid_feature_collection``) check GeoJSON the way a GIS
would (closed, simple, properly nested rings, polygons whose interiors are disjoint and which
meet at most at single corner points, as OGC allows), with exact integer arithmetic; the CLI
tests use them on real slides.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xt_core.outputs.colours import PALETTE, class_colour, class_colours, palette_array
from xt_core.outputs.geojson import heatmap_features, mask_polygons, write_geojson
from xt_core.outputs.heatmap_png import add_legend, heatmap_overlay, write_heatmap_png
from xt_core.outputs.heatmap_tiff import heatmap_labels, pyramid_levels, write_heatmap_tiff
from xt_core.outputs.records import (
    output_names,
    read_summary_csv,
    slide_stem,
    summary_fields,
    summary_row,
    write_summary_csv,
)

CLASSES = ["benign", "adenocarcinoma", "squamous"]


# ----------------------------------------------------------------------------- geometry checks
def _int_points(ring) -> np.ndarray:
    return np.round(np.asarray(ring, dtype=np.float64) * 1000).astype(np.int64)


def _segments(ring_pts: np.ndarray) -> np.ndarray:
    return np.stack([ring_pts[:-1], ring_pts[1:]], axis=1)  # (n, 2, 2)


def _orient(a, b, c):
    return np.sign((b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0]))


def _intersections(s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """(n, m) bool: segment i of s1 meets (touches, crosses or overlaps) segment j of s2."""
    p1, q1 = s1[:, None, 0], s1[:, None, 1]
    p2, q2 = s2[None, :, 0], s2[None, :, 1]
    o1, o2, o3, o4 = _orient(p1, q1, p2), _orient(p1, q1, q2), _orient(p2, q2, p1), _orient(p2, q2, q1)
    general = (o1 * o2 <= 0) & (o3 * o4 <= 0)
    collinear = (o1 == 0) & (o2 == 0) & (o3 == 0) & (o4 == 0)
    lo1, hi1 = np.minimum(p1, q1), np.maximum(p1, q1)
    lo2, hi2 = np.minimum(p2, q2), np.maximum(p2, q2)
    boxes = np.all((lo1 <= hi2) & (lo2 <= hi1), axis=-1)
    return np.where(collinear, boxes, general)


def _corner_contacts(s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """(n, m) bool: the two segments meet in one point that is an end point of both.

    Two rings (or two polygons) may meet like that (OGC: at finitely many points); sharing a
    stretch of edge, crossing, or one ring's corner on the other's edge is invalid.
    """
    p1, q1 = s1[:, None, 0], s1[:, None, 1]
    p2, q2 = s2[None, :, 0], s2[None, :, 1]
    shared = [np.all(a == b, axis=-1) for a in (p1, q1) for b in (p2, q2)]
    one_shared = np.sum(shared, axis=0) == 1
    o1, o2 = _orient(p1, q1, p2), _orient(p1, q1, q2)
    collinear = (o1 == 0) & (o2 == 0)
    # collinear segments sharing an end overlap unless they point away from each other
    d1, d2 = q1 - p1, q2 - p2
    away = np.where(shared[0] | shared[3], np.sum(d1 * d2, axis=-1) < 0, np.sum(d1 * d2, axis=-1) > 0)
    return one_shared & (~collinear | away)


def _signed_area(pts: np.ndarray) -> float:
    x, y = pts[:-1, 0].astype(float), pts[:-1, 1].astype(float)
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _edge_midpoint(ring_pts: np.ndarray) -> np.ndarray:
    """A point of the ring that no other ring passes through (rings meet only at corners)."""
    return (ring_pts[0].astype(float) + ring_pts[1].astype(float)) / 2


def _inside(point, ring_pts: np.ndarray) -> bool:
    """Even-odd rule (the point is never on the ring in these tests)."""
    x, y = point
    xs, ys = ring_pts[:-1, 0].astype(float), ring_pts[:-1, 1].astype(float)
    xn, yn = np.roll(xs, -1), np.roll(ys, -1)
    crosses = (ys > y) != (yn > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = xs + (y - ys) * (xn - xs) / (yn - ys)
    return bool(np.count_nonzero(crosses & (x < x_at)) % 2)


def assert_valid_ring(ring) -> np.ndarray:
    pts = _int_points(ring)
    assert len(pts) >= 4 and np.array_equal(pts[0], pts[-1]), "ring not closed"
    segs = _segments(pts)
    n = len(segs)
    hits = _intersections(segs, segs)
    idx = np.arange(n)
    adjacent = (np.abs(idx[:, None] - idx[None, :]) <= 1) | ((idx[:, None] == 0) & (idx[None, :] == n - 1)) | (
        (idx[:, None] == n - 1) & (idx[None, :] == 0))
    assert not (hits & ~adjacent).any(), "ring touches or crosses itself"
    a, b, c = pts[:-1], np.roll(pts[:-1], -1, axis=0), np.roll(pts[:-1], -2, axis=0)
    spike = (_orient(a, b, c) == 0) & (np.sum((b - a) * (c - b), axis=-1) <= 0)
    assert not spike.any(), "ring folds back on itself"
    return pts


def assert_valid_multipolygon(coords, bounds=None) -> None:
    polys = []
    for polygon in coords:
        rings = [assert_valid_ring(r) for r in polygon]
        assert _signed_area(rings[0]) > 0, "exterior ring must be counter-clockwise"
        for hole in rings[1:]:
            assert _signed_area(hole) < 0, "holes must be clockwise"
            assert _inside(_edge_midpoint(hole), rings[0]), "hole outside its exterior"
        polys.append(rings)
    all_rings = [(i, r) for i, rings in enumerate(polys) for r in rings]
    for a in range(len(all_rings)):
        for b in range(a + 1, len(all_rings)):
            sa, sb = _segments(all_rings[a][1]), _segments(all_rings[b][1])
            hits = _intersections(sa, sb) & ~_corner_contacts(sa, sb)
            assert not hits.any(), "two rings cross or share an edge"
    for i, rings in enumerate(polys):  # a polygon inside another must sit in one of its holes
        probe = _edge_midpoint(rings[0])
        for j, other in enumerate(polys):
            if i != j and _inside(probe, other[0]):
                assert any(_inside(probe, h) for h in other[1:]), "polygons overlap"
    if bounds is not None:
        for rings in polys:
            for r in rings:
                assert (r >= 0).all() and (r[:, 0] <= bounds[0] * 1000).all() and (r[:, 1] <= bounds[1] * 1000).all()


def assert_valid_feature_collection(fc: dict, bounds, classes) -> None:
    assert fc["type"] == "FeatureCollection"
    colours = class_colours(classes)
    for feature in fc["features"]:
        assert feature["type"] == "Feature"
        props = feature["properties"]
        assert props["objectType"] == "annotation"
        name = props["classification"]["name"]
        assert name in classes and props["classification"]["color"] == list(colours[name])
        geom = feature["geometry"]
        assert geom["type"] == "MultiPolygon" and geom["coordinates"]
        assert_valid_multipolygon(geom["coordinates"], bounds)


def _covered(polygons, point) -> bool:
    return any(_inside(point, _int_points(p[0]) / 1000) and not any(_inside(point, _int_points(h) / 1000) for h in p[1:])
               for p in polygons)


# ----------------------------------------------------------------------------- colours
def test_one_palette_for_every_output() -> None:
    assert len(set(PALETTE)) == len(PALETTE)
    assert class_colours(CLASSES) == {c: PALETTE[i] for i, c in enumerate(CLASSES)}
    assert palette_array(3).tolist() == [list(PALETTE[i]) for i in range(3)]
    assert class_colour(len(PALETTE)) == PALETTE[0]


# ----------------------------------------------------------------------------- heatmap OME-TIFF
def _heatmap(rows=100, cols=70, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(rows, cols, 3)).astype(np.float32)
    heat = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    heat[:20, :30] = np.nan  # a skipped region
    return heat.astype(np.float32)


def test_heatmap_tiff_probabilities_pyramid_mpp_and_names(tmp_path: Path) -> None:
    import tifffile
    import tiffslide

    heat = _heatmap()
    path = write_heatmap_tiff(tmp_path / "h.ome.tif", heat, CLASSES, (256.5, 256.5), (0.499, 0.499), tile=16, name="s")
    with tiffslide.TiffSlide(path) as s:
        assert s.dimensions == (70, 100)
        assert s.level_dimensions == ((70, 100), (35, 50), (18, 25), (9, 13))  # halving to one tile
        assert float(s.properties["tiffslide.mpp-x"]) == pytest.approx(256.5 * 0.499, rel=1e-6)
        assert float(s.properties["tiffslide.mpp-y"]) == pytest.approx(256.5 * 0.499, rel=1e-6)
        back = s.read_region((0, 0), 0, (70, 100), as_array=True)
    assert back.dtype == np.float32 and back.shape == (100, 70, 3)
    np.testing.assert_array_equal(back, np.nan_to_num(heat, nan=0.0))
    with tifffile.TiffFile(path) as tif:
        ome = tif.ome_metadata
        assert tif.series[0].axes == "CYX" and len(tif.series[0].levels) == 4
        level1 = tif.series[0].levels[1].asarray()
    for name in CLASSES:
        assert f'Name="{name}"' in ome
    assert 'PhysicalSizeX="127.9935"' in ome and 'PhysicalSizeXUnit="µm"' in ome
    # level 1 is the mean of analysed pixels in each 2 x 2 block
    np.testing.assert_allclose(level1[:, 10:, 15:], np.nanmean(
        heat[20:100, 30:70].reshape(40, 2, 20, 2, 3), axis=(1, 3)).transpose(2, 0, 1), rtol=1e-5)
    assert (level1[:, :10, :15] == 0).all()
    # deterministic: no timestamp, the UUID comes from the content
    again = write_heatmap_tiff(tmp_path / "again.ome.tif", heat, CLASSES, (256.5, 256.5), (0.499, 0.499), tile=16, name="s")
    assert again.read_bytes() == path.read_bytes()
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["again.ome.tif", "h.ome.tif"]  # no temporaries


def test_heatmap_tiff_labels(tmp_path: Path) -> None:
    import tifffile
    import tiffslide

    heat = _heatmap(40, 50)
    labels = heatmap_labels(heat)
    assert labels.dtype == np.uint8
    assert (labels[:20, :30] == 0).all()
    np.testing.assert_array_equal(labels[20:], np.argmax(heat[20:], -1) + 1)
    path = write_heatmap_tiff(tmp_path / "l.ome.tif", heat, CLASSES, (10.0, 10.0), (0.25, 0.25), labels=True, tile=16)
    with tiffslide.TiffSlide(path) as s:
        assert s.dimensions == (50, 40) and float(s.properties["tiffslide.mpp-x"]) == pytest.approx(2.5)
        np.testing.assert_array_equal(s.read_region((0, 0), 0, (50, 40), as_array=True)[..., 0], labels)
    with tifffile.TiffFile(path) as tif:
        ome = tif.ome_metadata
        assert tif.series[0].axes == "YX"
        np.testing.assert_array_equal(tif.series[0].levels[1].asarray(), labels[::2, ::2])  # nearest
    assert '<M K="label_0">background</M>' in ome and '<M K="label_2">adenocarcinoma</M>' in ome
    assert len(pyramid_levels(labels, 16, True)) == 3


def test_heatmap_tiff_without_mpp_and_bad_input(tmp_path: Path) -> None:
    import tifffile

    path = write_heatmap_tiff(tmp_path / "n.ome.tif", _heatmap(8, 8), CLASSES, (4.0, 4.0), None)
    with tifffile.TiffFile(path) as tif:
        assert "PhysicalSizeX" not in tif.ome_metadata
    with pytest.raises(ValueError, match="heatmap must be"):
        write_heatmap_tiff(tmp_path / "x.ome.tif", _heatmap(8, 8)[..., :2], CLASSES, (4.0, 4.0), None)
    assert not (tmp_path / "x.ome.tif").exists()


# ----------------------------------------------------------------------------- GeoJSON
def test_polygons_of_simple_shapes() -> None:
    mask = np.zeros((6, 6), bool)
    mask[1:5, 1:5] = True
    mask[2:4, 2:4] = False  # a 2 x 2 hole
    (polygon,) = mask_polygons(mask)
    assert len(polygon) == 2  # exterior and one hole
    assert_valid_multipolygon([polygon])
    pts = _int_points(polygon[0]) / 1000
    assert _signed_area(_int_points(polygon[0])) / 1e6 == pytest.approx(16)  # along the token edges
    assert _signed_area(_int_points(polygon[1])) / 1e6 == pytest.approx(-4)
    assert pts[:, 0].min() == 1.0 and pts[:, 0].max() == 5.0  # pixel edges, not centres
    # lossless simplification: a rectangle keeps only its 4 corner points (+ closing one)
    rect = np.zeros((10, 20), bool)
    rect[2:8, 3:17] = True
    (only,) = mask_polygons(rect, token_size=(2.0, 3.0), origin=(100.0, 50.0))
    assert len(only[0]) == 5
    xs, ys = np.array(only[0])[:, 0], np.array(only[0])[:, 1]
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (106.0, 134.0, 56.0, 74.0)
    # an isolated token is its square (as napari paints it), not a diamond through the edge midpoints
    single = np.zeros((3, 3), bool)
    single[1, 1] = True
    (square,) = mask_polygons(single, token_size=(10.0, 20.0), origin=(5.0, 0.0))
    assert sorted(map(tuple, square[0][:-1])) == [(15.0, 20.0), (15.0, 40.0), (25.0, 20.0), (25.0, 40.0)]
    # pixels touching only at a corner are separate polygons, meeting at that corner only
    diag = np.eye(3, dtype=bool)
    polys = mask_polygons(diag)
    assert len(polys) == 3 and all(len(p[0]) == 5 for p in polys)
    assert_valid_multipolygon(polys)
    # one group around a hole that reaches the outside only through a corner: the hole is a
    # ring of its own that touches the exterior at that corner (each ring stays simple)
    notch = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 0]], bool)
    (polygon,) = mask_polygons(notch)
    assert len(polygon) == 2
    assert_valid_multipolygon([polygon])
    assert _signed_area(_int_points(polygon[0])) / 1e6 == pytest.approx(8) and len(polygon[1]) == 5


def test_polygon_area_equals_the_tokens_it_covers() -> None:
    """The exported area is exactly the painted area: token count x token area (minus the cut at the slide's edge)."""
    rng = np.random.default_rng(7)
    mask = rng.random((23, 31)) < 0.5
    token = (7.5, 11.25)
    polys = mask_polygons(mask, token_size=token)
    area = sum(_signed_area(_int_points(p[0])) + sum(_signed_area(_int_points(h)) for h in p[1:]) for p in polys) / 1e6
    assert area == pytest.approx(mask.sum() * token[0] * token[1])
    assert_valid_multipolygon(polys)


@pytest.mark.parametrize("seed", range(4))
def test_random_masks_give_valid_polygons_inside_the_slide(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for trial in range(16):
        rows, cols = rng.integers(3, 18, size=2)
        mask = rng.random((rows, cols)) < rng.uniform(0.3, 0.7)
        if trial % 2:
            from scipy import ndimage as ndi

            mask = ndi.binary_closing(mask)
        token = tuple(float(v) for v in rng.uniform(3.0, 300.0, size=2))
        # the slide ends inside the last column / row of tokens (the grid pads it)
        bounds = ((cols - rng.uniform(0.0, 0.99)) * token[0], (rows - rng.uniform(0.0, 0.99)) * token[1])
        polys = mask_polygons(mask, token_size=token, bounds=bounds)
        assert_valid_multipolygon(polys, bounds)
        # every pixel centre well inside the slide is covered exactly when it is in the mask
        for r in range(rows):
            for c in range(cols):
                centre = ((c + 0.5) * token[0], (r + 0.5) * token[1])
                if centre[0] < bounds[0] - token[0] and centre[1] < bounds[1] - token[1]:
                    assert _covered(polys, centre) == bool(mask[r, c]), (seed, trial, r, c)


def test_heatmap_features_for_qupath(tmp_path: Path) -> None:
    heat = np.empty((12, 10, 3), np.float32)
    heat[...] = [0.9, 0.05, 0.05]  # benign ...
    heat[6:9, 2:5] = [0.1, 0.1, 0.8]  # ... around a squamous patch
    heat[:3, :4] = np.nan  # a skipped region
    features = heatmap_features(heat, CLASSES, (100.0, 100.0), bounds=(950.0, 1130.0), threshold=0.5)
    assert_valid_feature_collection(features, (950.0, 1130.0), CLASSES)
    names = [f["properties"]["classification"]["name"] for f in features["features"]]
    assert names == ["benign", "squamous"]  # adenocarcinoma is nowhere above 0.5
    benign, squamous = (f["geometry"]["coordinates"] for f in features["features"])
    assert features["features"][1]["properties"]["classification"]["color"] == list(PALETTE[2])
    assert len(benign) == 1 and len(benign[0]) == 2  # one polygon with the squamous patch as its hole
    # skipped (NaN) tokens are never part of a polygon; analysed ones are
    assert not _covered(benign, (150.0, 150.0)) and _covered(benign, (650.0, 150.0))
    assert not _covered(benign, (350.0, 750.0)) and _covered(squamous, (350.0, 750.0))
    path = write_geojson(tmp_path / "a.geojson", heat, CLASSES, (100.0, 100.0), bounds=(950.0, 1130.0))
    assert json.loads(path.read_text()) == features


# ----------------------------------------------------------------------------- PNG preview
def test_preview_tints_analysed_tissue_and_has_a_legend(tmp_path: Path) -> None:
    thumb = np.full((60, 80, 3), 200, np.uint8)
    heat = np.full((6, 8, 3), np.nan, np.float32)
    heat[:3, :4] = [0.8, 0.1, 0.1]  # benign, top left
    heat[3:, 4:] = [0.1, 0.1, 0.8]  # squamous, bottom right
    tissue = np.ones((30, 40), bool)
    tissue[:, :5] = False
    out = heatmap_overlay(thumb, heat, (100.0, 100.0), (800, 600), tissue=tissue, alpha=0.45)
    assert out[5, 20].tolist() == [round(0.55 * 200 + 0.45 * v) for v in PALETTE[0]]
    assert out[50, 60].tolist() == [round(0.55 * 200 + 0.45 * v) for v in PALETTE[2]]
    assert out[5, 2].tolist() == [200, 200, 200]  # not tissue
    assert out[50, 20].tolist() == [200, 200, 200]  # skipped region
    legend = add_legend(out, CLASSES, title="slide: benign")
    assert legend.shape[0] >= 60 and legend.shape[1] > 80 + 40
    np.testing.assert_array_equal(legend[:60, :80], out)
    for colour in PALETTE[:3]:
        assert (legend[:, 80:] == colour).all(axis=-1).sum() > 20  # the colour boxes
    a = write_heatmap_png(tmp_path / "a.png", thumb, heat, CLASSES, (100.0, 100.0), (800, 600), tissue=tissue, title="slide: benign")
    b = write_heatmap_png(tmp_path / "b.png", thumb, heat, CLASSES, (100.0, 100.0), (800, 600), tissue=tissue, title="slide: benign")
    assert a.read_bytes() == b.read_bytes()
    assert np.asarray(Image.open(a)).shape == legend.shape


# ----------------------------------------------------------------------------- records
def test_names_and_summary_csv(tmp_path: Path) -> None:
    assert slide_stem("/a/b/OS-1-detail.ome.tif") == "OS-1-detail"
    assert slide_stem("x/CMU-1.svs") == "CMU-1"
    assert output_names("s", False) == {"json": "s.json"}
    assert output_names("s", True) == {"json": "s.json", "heatmap": "s.heatmap.ome.tif",
                                       "preview": "s.preview.png", "geojson": "s.geojson"}
    assert summary_fields(CLASSES) == ["slide", "status", "prediction", "p_benign", "p_adenocarcinoma",
                                       "p_squamous", "seconds", "error"]
    record = {"prediction": "benign", "probabilities": {"benign": 0.5, "adenocarcinoma": 0.25, "squamous": 0.25}}
    rows = [summary_row("a.svs", "done", record, seconds=1.234),
            summary_row("b.svs", "failed", seconds=0.1, error="not a slide, says: \"x\""),
            summary_row("c.svs", "pending")]
    path = write_summary_csv(tmp_path / "summary.csv", rows, CLASSES)
    back = read_summary_csv(path)
    assert back[0] == {"slide": "a.svs", "status": "done", "prediction": "benign", "p_benign": "0.500000",
                       "p_adenocarcinoma": "0.250000", "p_squamous": "0.250000", "seconds": "1.23", "error": ""}
    assert back[1]["error"] == 'not a slide, says: "x"' and back[1]["prediction"] == ""
    assert back[2]["status"] == "pending"


def test_outputs_get_normal_file_permissions(tmp_path) -> None:
    import os
    import stat

    from xt_core.outputs import write_json

    umask = os.umask(0o022)
    try:
        path = write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
