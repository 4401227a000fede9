"""The "xT slide analysis" dock, used as a user does: docked through napari's plugin manager,
runs started by clicking Analyse while the test keeps Qt's event loop going, results checked on
screen. Real slides from ../shared/data, small real models with random weights (conftest.py).
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt, QTimer

from napari_xt._layers import DisplayGrid, Placement, classes_layer
from napari_xt._widget import XTWidget
from xt_core.roi import rectangle, regions_in_shapes, tokens_in_shapes

RUN_TIMEOUT_MS = 60_000


# ----------------------------------------------------------------------------- helpers
@pytest.fixture
def notifications():
    """Every napari notification shown during the test (errors, infos, warnings)."""
    from napari.utils.notifications import notification_manager

    seen: list = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def _messages(seen: list) -> str:
    return "\n".join(str(n.message) for n in seen)


def _dock(viewer) -> XTWidget:
    """The dock exactly as Plugins > xT slide analysis opens it."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-xt", "xT slide analysis")
    assert isinstance(widget, XTWidget)
    return widget


def _open(viewer_factory, slide: Path, model: Path | None = None, show: bool = False):
    viewer = viewer_factory(show=show)
    viewer.open(str(slide), plugin="napari-xt")
    widget = _dock(viewer)
    if model is not None:
        assert widget.set_model(model)
    return viewer, widget


def _click(qtbot, widget: XTWidget) -> None:
    qtbot.mouseClick(widget._analyse, Qt.MouseButton.LeftButton)


def _click_and_wait(qtbot, widget: XTWidget) -> None:
    _click(qtbot, widget)
    assert widget.running or widget.status().startswith("failed")
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)


def _slow_batches(monkeypatch, seconds: float) -> list[float]:
    """Make every encoded batch take a little longer, so a test can watch (or stop) a run mid-way.

    Returns the list the batches append their finishing times to."""
    import xt_core.preview

    real = xt_core.preview.region_probabilities
    done: list[float] = []

    def slow(model, tokens):
        time.sleep(seconds)
        out = real(model, tokens)
        done.append(time.perf_counter())
        return out

    monkeypatch.setattr(xt_core.preview, "region_probabilities", slow)
    return done


def _painted_boxes_world(layer) -> np.ndarray:
    """World boxes (row0, col0, row1, col1) of the painted pixels of a labels layer."""
    rows, cols = np.nonzero(np.asarray(layer.data))
    scale, translate = np.asarray(layer.scale), np.asarray(layer.translate)
    centres = np.stack([rows, cols], axis=1) * scale + translate
    return np.concatenate([centres - scale / 2, centres + scale / 2], axis=1)


def _painted_tokens(layer, result) -> np.ndarray:
    """(rows, cols) bool over the result's heatmap: the tokens with paint on the classes layer."""
    k = DisplayGrid(result.heatmap.shape[:2], result.token_size, result.origin, result.grid.slide_dimensions).factor
    painted = np.zeros(result.heatmap.shape[:2], bool)
    rows, cols = np.nonzero(np.asarray(layer.data))
    painted[rows // k, cols // k] = True
    return painted


def _slide_box_world(slide_layer) -> np.ndarray:
    scale, translate = np.asarray(slide_layer.scale), np.asarray(slide_layer.translate)
    h, w = slide_layer.data[0].shape[:2]
    first = translate - scale / 2
    return np.concatenate([first, first + scale * (h, w)])


def _render(viewer) -> np.ndarray:
    viewer.screenshot(canvas_only=True, flash=False)  # the first render after a change may be stale
    return np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(int)


# ----------------------------------------------------------------------------- opening
def test_dock_opens_from_the_plugins_menu_and_shows_the_model_card(viewer_factory, qtbot, notifications) -> None:
    viewer = viewer_factory()
    widget = _dock(viewer)  # what Plugins > "xT slide analysis" does; napari injects the viewer
    assert widget._viewer == viewer  # napari hands plugins a public-only proxy of the viewer
    card = html.unescape(widget._model_card.text())
    assert "xt-lung-lc25000-v1" in card and "benign, adenocarcinoma, squamous_cell_carcinoma" in card
    assert "lung H&E" in card and "not for:" in card and "diagnosis" in card
    assert [widget._table.item(i, 1).text() for i in range(3)] == ["benign", "adenocarcinoma", "squamous_cell_carcinoma"]
    _click(qtbot, widget)  # no slide open
    assert not widget.running and "open a slide first" in _messages(notifications)


# ----------------------------------------------------------------------------- a run
def test_click_run_grows_a_heatmap_then_shows_the_result(viewer_factory, qtbot, monkeypatch, cmu_svs: Path,
                                                         small_model_dir: Path, recwarn, tmp_path: Path) -> None:
    viewer, widget = _open(viewer_factory, cmu_svs, small_model_dir)
    widget._batch.setValue(4)
    _slow_batches(monkeypatch, 0.05)
    ticks: list[float] = []  # a 10 ms timer on the GUI thread: gaps between its ticks are freezes
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    progress_at: list[float] = []
    widget._bar.valueChanged.connect(lambda v: progress_at.append(time.perf_counter()) if v > 0 else None)
    _click(qtbot, widget)
    assert widget.running and not widget._analyse.isEnabled() and widget._cancel.isEnabled()
    run = widget._run

    # partial results: the preview layer paints some tokens while the run still goes
    def partial_shown() -> bool:
        layer = run.preview_layer
        return widget.running and layer is not None and 0 < np.count_nonzero(layer.data) and run.grid is not None \
            and widget._bar.value() < widget._bar.maximum()

    qtbot.waitUntil(partial_shown, timeout=RUN_TIMEOUT_MS)
    assert "regions" in widget._eta.text() and "left" in widget._eta.text()
    assert run.pbar.total == run.grid.regions and 0 < run.pbar.n < run.pbar.total  # napari's activity panel
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)
    timer.stop()
    t = np.asarray(ticks)
    gaps = np.diff(t)
    streaming = np.diff(t[(t >= progress_at[0]) & (t <= progress_at[-1])])
    # while regions stream in, the dock only writes arrays and refreshes one layer: no freeze
    # (bounds allow for a 2-core machine shared with other work; measured ~0.01-0.1 s when quiet)
    assert len(streaming) > 10 and streaming.max() < 0.5, f"the GUI froze for {streaming.max():.2f} s while reading"
    # creating the layers (napari's cost) at the start and the end stays short too
    assert gaps.max() < 1.5, f"the GUI froze for {gaps.max():.2f} s during the run"

    # the result replaces the preview; the classes layer is the selected one
    names = [layer.name for layer in viewer.layers]
    assert names.count("CMU-1-Small-Region xT classes") == 1 and "CMU-1-Small-Region tissue" in names
    classes = viewer.layers["CMU-1-Small-Region xT classes"]
    assert viewer.layers.selection.active is classes and run.partial_updates > 0  # the preview, now the result
    result = widget._shown.result
    assert classes.metadata["xt_result"]["prediction"] == result.prediction
    assert widget.status().startswith(f"CMU-1-Small-Region (whole slide): {result.prediction} (p = ")
    assert not [w for w in recwarn if "color_dict" in str(w.message)]

    # the labels are the result's classes, drawn finer only to stop at the slide's edge
    display = DisplayGrid(result.heatmap.shape[:2], result.token_size, result.origin, result.grid.slide_dimensions)
    expected, _, _ = classes_layer(widget._shown.token_labels(), display, Placement.of_layer(viewer.layers[0]),
                                   result.classes, "x", {})
    np.testing.assert_array_equal(classes.data, expected)
    analysed = ~np.isnan(result.heatmap[..., 0])
    assert np.count_nonzero(display.expand(analysed)) == np.count_nonzero(classes.data)

    # every painted token lies on the slide: none starts past its edges, none sticks out by a token
    boxes, slide_box = _painted_boxes_world(classes), _slide_box_world(viewer.layers[0])
    assert (boxes[:, :2] < slide_box[2:]).all() and (boxes[:, :2] >= slide_box[:2] - 1e-6).all()
    token_world = np.asarray(viewer.layers[0].scale) * result.token_size[::-1]
    assert (boxes[:, 2:] - slide_box[2:] < token_world / 7).all()

    # hovering a token names its class (the labels layer's features)
    r, c = np.argwhere(classes.data > 0)[0]
    status = classes.get_status(classes.data_to_world((r, c)), world=True)
    assert f"class: {result.classes[classes.data[r, c] - 1]}" in str(status)

    # the classification table: a bar per class, the prediction in bold, shares of the heatmap
    table = widget._table
    probs = [float(table.probability_text(i)) for i in range(3)]
    assert probs == pytest.approx(list(result.probabilities), abs=1e-3) and sum(probs) == pytest.approx(1, abs=3e-3)
    best = int(np.argmax(result.probabilities))
    assert table.item(best, 1).font().bold()
    assert all(table.item(i, 3).text().endswith("%") for i in range(3))

    # opacity and threshold act on the classes layer
    widget._opacity.setValue(80)
    assert classes.opacity == pytest.approx(0.8)
    widget._threshold.setValue(0.99)
    assert np.count_nonzero(classes.data) < np.count_nonzero(expected)

    # a second click reuses the loaded model and replaces the layers
    widget._threshold.setValue(0.0)
    n_layers = len(viewer.layers)
    _click_and_wait(qtbot, widget)
    assert widget._models.loads == 1 and len(viewer.layers) == n_layers

    # saving from the dock, through the engine's writers
    _check_saves(widget, viewer, tmp_path)


def _check_saves(widget: XTWidget, viewer, tmp_path: Path) -> None:
    import tifffile

    from napari.plugins.io import save_layers

    shown = widget._shown
    result = shown.result
    record = json.loads(widget.save("json", tmp_path / "r.json").read_text())
    assert record["prediction"] == result.prediction and record["model"]["name"] == "small-test-model"
    assert record["region_of_interest"]["scope"] == "whole slide" and record["settings"]["batch_size"] == 4
    with tifffile.TiffFile(widget.save("tiff", tmp_path / "h.ome.tif")) as tif:
        assert tif.series[0].shape == (3, *result.heatmap.shape[:2])
    collection = json.loads(widget.save("geojson", tmp_path / "c.geojson").read_text())
    # QuPath gets the squares napari paints: the exported area is the painted area, cut at the slide's edge
    w, h = result.grid.slide_dimensions
    tw, th = result.token_size
    labels = shown.token_labels()
    for feature in collection["features"]:
        i = result.classes.index(feature["properties"]["name"])
        area = sum(_ring_area(poly[0]) - sum(_ring_area(hole) for hole in poly[1:])
                   for poly in feature["geometry"]["coordinates"])
        rows, cols = np.nonzero(labels == i + 1)
        painted = sum(min(tw, w - c * tw) * min(th, h - r * th) for r, c in zip(rows, cols))
        assert area == pytest.approx(painted, rel=1e-6)
    # File > Save Layers with napari-xt's writer: the same polygons
    classes = viewer.layers["CMU-1-Small-Region xT classes"]
    written = save_layers(str(tmp_path / "layer.geojson"), [classes], plugin="napari-xt")
    assert written == [str(tmp_path / "layer.geojson")]
    via_layer = json.loads((tmp_path / "layer.geojson").read_text())
    assert [f["properties"]["name"] for f in via_layer["features"]] == [f["properties"]["name"] for f in collection["features"]]
    for a, b in zip(via_layer["features"], collection["features"]):
        area_a = sum(_ring_area(p[0]) for p in a["geometry"]["coordinates"])
        area_b = sum(_ring_area(p[0]) for p in b["geometry"]["coordinates"])
        assert area_a == pytest.approx(area_b, rel=1e-6)


def _ring_area(ring) -> float:
    pts = np.asarray(ring, dtype=float)
    x, y = pts[:-1, 0], pts[:-1, 1]
    return abs(0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)))


def test_screenshot_colours_tissue_and_nothing_outside_the_analysed_tokens(viewer_factory, qtbot, cmu_svs: Path,
                                                                           small_model_dir: Path) -> None:
    viewer, widget = _open(viewer_factory, cmu_svs, small_model_dir, show=True)
    _click_and_wait(qtbot, widget)
    classes = viewer.layers["CMU-1-Small-Region xT classes"]
    classes.opacity = 1.0
    viewer.reset_view()
    with_overlay = _render(viewer)
    classes.visible = False
    without = _render(viewer)
    result = widget._shown.result

    # the slide's footprint on the (black) canvas maps canvas pixels to level-0 pixels
    ys, xs = np.nonzero(without.max(axis=2) > 20)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    w, h = result.grid.slide_dimensions
    cy, cx = np.mgrid[0 : without.shape[0], 0 : without.shape[1]]
    lx, ly = (cx + 0.5 - x0) / (x1 - x0) * w, (cy + 0.5 - y0) / (y1 - y0) * h
    tw, th = result.token_size
    coloured = np.abs(with_overlay - without).sum(axis=2) > 40
    # how far (in canvas pixels) each pixel is from a token border or the slide's edge: skip the blur band
    px = (x1 - x0) / w
    margin = 2.5
    off_border = (np.minimum(lx % tw, tw - lx % tw) * px > margin) & (np.minimum(ly % th, th - ly % th) * px > margin)
    on_slide = (lx > margin / px) & (lx < w - margin / px) & (ly > margin / px) & (ly < h - margin / px)
    outside = (lx < -margin / px) | (lx > w + margin / px) | (ly < -margin / px) | (ly > h + margin / px)
    tok_r = np.clip((ly // th).astype(int), 0, result.heatmap.shape[0] - 1)
    tok_c = np.clip((lx // tw).astype(int), 0, result.heatmap.shape[1] - 1)
    painted = ~np.isnan(result.heatmap[tok_r, tok_c, 0])

    assert not coloured[outside].any(), "heatmap colour outside the slide"
    check = on_slide & off_border
    assert (coloured[check] == painted[check]).mean() > 0.995  # colour exactly on the analysed tokens
    # on screen: colour over tissue, none over the glass of regions without tissue
    rgb = without.astype(float)
    saturation = (rgb.max(axis=2) - rgb.min(axis=2)) / np.maximum(rgb.max(axis=2), 1)
    tissue = on_slide & off_border & (saturation > 0.25) & (rgb.max(axis=2) < 235)
    glass = on_slide & off_border & (saturation < 0.06) & (rgb.min(axis=2) > 215)
    assert tissue.sum() > 1000 and glass.sum() > 1000
    assert coloured[tissue].mean() > 0.9, coloured[tissue].mean()
    region_tissue = result.grid.tissue_fractions.reshape(result.grid.rows, result.grid.cols)
    rw, rh = result.grid.region_size_level0
    reg_r = np.clip((ly // rh).astype(int), 0, result.grid.rows - 1)
    reg_c = np.clip((lx // rw).astype(int), 0, result.grid.cols - 1)
    bare_glass = glass & (region_tissue[reg_r, reg_c] == 0)
    assert bare_glass.sum() > 1000 and not coloured[bare_glass].any()


# ----------------------------------------------------------------------------- cancel, regions of interest
def test_cancel_stops_after_the_batch_being_encoded(viewer_factory, qtbot, monkeypatch, cmu_svs: Path,
                                                   small_model_dir: Path, notifications) -> None:
    viewer, widget = _open(viewer_factory, cmu_svs, small_model_dir)
    widget._batch.setValue(1)
    batches = _slow_batches(monkeypatch, 0.15)
    _click(qtbot, widget)
    qtbot.waitUntil(lambda: widget._bar.value() >= 2, timeout=RUN_TIMEOUT_MS)
    t0 = time.perf_counter()
    qtbot.mouseClick(widget._cancel, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.running, timeout=5000)
    # behaviour, not a stopwatch: at most the batch in flight finishes after the click (each
    # batch takes 0.15 s here, so that is well within a second on any machine)
    assert sum(1 for t in batches if t > t0) <= 1
    assert widget.status().endswith("cancelled") and "cancelled" in _messages(notifications)
    assert not [layer for layer in viewer.layers if "xT" in layer.name]  # the preview went with the run
    assert widget._analyse.isEnabled() and not widget._cancel.isEnabled()


def test_a_run_over_drawn_shapes_or_the_view_covers_just_that(viewer_factory, qtbot, cmu_svs: Path,
                                                              small_model_dir: Path) -> None:
    viewer, widget = _open(viewer_factory, cmu_svs, small_model_dir, show=True)
    slide_layer = viewer.layers[0]
    mpp = float(slide_layer.scale[-1])
    # a rectangle drawn in world coordinates (um) over tissue in the middle of the slide
    box_px = (700.0, 1100.0, 1300.0, 1500.0)  # level-0 x0, y0, x1, y1
    world = np.array([[box_px[1], box_px[0]], [box_px[3], box_px[2]]]) * mpp - mpp / 2
    viewer.add_shapes([world], shape_type="rectangle", name="ROI")
    viewer.layers.selection.active = slide_layer
    widget._scope.setCurrentText("shapes")
    assert widget._shapes.currentText() == "ROI"
    _click_and_wait(qtbot, widget)
    result = widget._shown.result
    polygon = rectangle(*box_px)
    chosen = regions_in_shapes(result.grid, [polygon]) & (result.grid.tissue_fractions >= 0.1)
    assert result.regions_tissue == int(chosen.sum()) < result.regions_total // 4
    inside = tokens_in_shapes(result.heatmap.shape[:2], result.token_size, [polygon])
    analysed = ~np.isnan(result.heatmap[..., 0])
    assert analysed.any() and not (analysed & ~inside).any()  # the result is exactly over the shape
    painted = _painted_tokens(viewer.layers["CMU-1-Small-Region xT classes"], result)
    assert painted.any() and not (painted & ~inside).any()  # on screen too
    assert widget.status().startswith("CMU-1-Small-Region (1 shape of 'ROI'):")

    # the field of view: zoom in on a corner of the tissue and analyse what is on screen
    viewer.scene.camera.center = (0.0, 1500 * mpp, 1000 * mpp)
    viewer.scene.camera.zoom = viewer.scene.camera.zoom * 3
    widget._scope.setCurrentText("field of view")
    _render(viewer)
    _click_and_wait(qtbot, widget)
    result = widget._shown.result
    (r0, c0), (r1, c1) = np.asarray(viewer.window._qt_viewer.canvas._viewbox_corners_in_world)[:, -2:]
    (x0, y0), (x1, y1) = (np.array([[c0, r0], [c1, r1]]) + mpp / 2) / mpp  # level-0, napari's own view box
    view = tokens_in_shapes(result.heatmap.shape[:2], result.token_size, [rectangle(x0, y0, x1, y1)])
    painted = _painted_tokens(viewer.layers["CMU-1-Small-Region xT classes"], result)
    assert painted.any() and not (painted & ~view).any()
    assert 0 < result.regions_tissue < result.regions_total // 2
    assert widget.status().startswith("CMU-1-Small-Region (field of view):")


# ----------------------------------------------------------------------------- other models
@pytest.mark.parametrize("kind", ["classification only", "segmentation only"])
def test_models_with_one_head_display(viewer_factory, qtbot, cmu_svs: Path, cls_only_model_dir: Path,
                                      seg_only_model_dir: Path, kind: str) -> None:
    model = cls_only_model_dir if kind == "classification only" else seg_only_model_dir
    viewer, widget = _open(viewer_factory, cmu_svs, model)
    assert kind.split()[0] in widget._model_card.text()
    _click_and_wait(qtbot, widget)
    result = widget._shown.result
    active = viewer.layers.selection.active
    if kind == "classification only":
        assert result.heatmap is None and result.prediction in result.classes
        assert active.name == "CMU-1-Small-Region xT regions" and np.count_nonzero(active.data) > 0
        assert float(widget._table.probability_text(0)) > 0
        assert not widget._save_geojson.isEnabled() and widget._save_json.isEnabled()
        assert widget.status().startswith(f"CMU-1-Small-Region (whole slide): {result.prediction}")
    else:
        assert result.probabilities is None and result.heatmap is not None
        assert active.name == "CMU-1-Small-Region xT classes" and np.count_nonzero(active.data) > 0
        assert widget._table.probability_text(0) == "-" and widget._save_geojson.isEnabled()
        assert "segmentation only" in widget.status()


# ----------------------------------------------------------------------------- failures
def test_failures_are_notifications_and_the_dock_stays_usable(viewer_factory, qtbot, monkeypatch, slides_dir: Path,
                                                              small_model_dir: Path, tmp_path: Path,
                                                              notifications) -> None:
    viewer, widget = _open(viewer_factory, slides_dir / "kidney-48-5.tif", small_model_dir)
    # a folder that is not a model: refused, the model chosen before stays
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{not json")
    (tmp_path / "junk" / "model.safetensors").write_bytes(b"0" * 16)
    assert not widget.set_model(tmp_path / "junk")
    assert "not a readable JSON config" in _messages(notifications)
    assert widget._model_info.name == "small-test-model"
    # a slide without a pixel size: asks for it, then runs with it
    _click(qtbot, widget)
    assert not widget.running and "enter it as 'pixel size'" in _messages(notifications)
    widget._mpp.setValue(0.5)
    widget._tissue.setValue(0.0)  # a fluorescence-like image: analyse every region
    _click_and_wait(qtbot, widget)
    assert widget._shown is not None and widget._shown.result.mpp == (0.5, 0.5)
    # an unreadable slide
    layer = viewer.layers["kidney-48-5"]
    layer.metadata["path"] = str(slides_dir / "broken.svs")
    notifications.clear()
    _click_and_wait(qtbot, widget)
    assert "broken.svs" in _messages(notifications) and widget.status().startswith("failed: ")
    assert widget._analyse.isEnabled()


def test_closing_the_slide_mid_run_ends_in_a_notification(viewer_factory, qtbot, monkeypatch, cmu_svs: Path,
                                                          small_model_dir: Path, notifications) -> None:
    viewer, widget = _open(viewer_factory, cmu_svs, small_model_dir)
    widget._batch.setValue(1)
    _slow_batches(monkeypatch, 0.1)
    _click(qtbot, widget)
    qtbot.waitUntil(lambda: widget._bar.value() >= 1, timeout=RUN_TIMEOUT_MS)
    viewer.layers.remove(viewer.layers["CMU-1-Small-Region"])
    qtbot.waitUntil(lambda: not widget.running, timeout=5000)
    assert "slide layer was closed" in _messages(notifications)
    assert "slide layer was closed" in widget.status() and "..." not in widget.status()
    assert not [layer for layer in viewer.layers if "xT" in layer.name]
    assert widget._analyse.isEnabled() and widget._slide.count() == 0


def test_long_messages_wrap_and_the_dock_keeps_its_width(viewer_factory, qtbot) -> None:
    viewer = viewer_factory(show=True)
    widget = _dock(viewer)
    qtbot.wait(50)
    dock_width = widget.parent().width() if widget.parent() else widget.width()
    canvas = viewer.window._qt_viewer.canvas.native
    canvas_width = canvas.width()
    widget._fail("/very/long/folder_name_without_spaces" * 20 + " and a long explanation " * 10)
    qtbot.wait(100)
    assert (widget.parent().width() if widget.parent() else widget.width()) <= dock_width + 2
    assert canvas.width() >= canvas_width - 2 and canvas.width() > 100
    status = widget._status
    assert status.height() > 3 * status.fontMetrics().height()  # wrapped onto lines ...
    assert status.height() >= status.heightForWidth(status.width())  # ... and none of them cut off


# ----------------------------------------------------------------------------- layer geometry and writer
def test_overlay_pixels_centre_on_the_slide_pixels_they_cover() -> None:
    """World position of overlay pixel (i, j)'s centre == world position of the centre of the
    level-0 block it covers, as napari places pixel centres at integer coordinates."""
    from napari.layers import Image

    placement = Placement((0.499, 0.501), (3.0, -2.0))
    slide_layer = Image(np.zeros((8, 8), np.uint8), scale=placement.scale, translate=placement.translate)
    for pixel in [(256.5, 256.5), (64.0, 32.0), (1.0, 1.0)]:
        layer = Image(np.zeros((5, 5), np.uint8), **{k: v for k, v in placement.overlay(pixel).items() if k != "units"})
        for i, j in [(0, 0), (3, 4)]:
            centre = (i * pixel[1] + (pixel[1] - 1) / 2, j * pixel[0] + (pixel[0] - 1) / 2)  # level-0 (row, col)
            np.testing.assert_allclose(layer.data_to_world((i, j)), slide_layer.data_to_world(centre))
    # and back: a world point on a level-0 pixel's left/top edge is that pixel's start in the engine
    np.testing.assert_allclose(placement.world_to_level0(np.array([[3.0 - 0.499 / 2, -2.0 - 0.501 / 2]])), [[0, 0]], atol=1e-9)


def test_display_grid_stops_at_the_slide_edge() -> None:
    grid = DisplayGrid((12, 10), (256.5, 256.5), (0.0, 0.0), (2220, 2967))
    assert grid.on_slide == (12, 9)  # the 10th column lies wholly in the padding
    rows, cols = grid.display_shape
    k = grid.factor
    assert k == 8 and (rows * 256.5 / k) >= 2967 > ((rows - 1) * 256.5 / k)
    assert (cols * 256.5 / k) >= 2220 > ((cols - 1) * 256.5 / k)
    values = np.arange(120).reshape(12, 10)
    out = grid.expand(values)
    assert out.shape == (rows, cols) and out[0, 0] == 0 and out[-1, -1] == values[11, 8]


def test_writer_refuses_other_layers_with_a_reason(tmp_path: Path) -> None:
    from napari.layers import Labels
    from napari.plugins.io import save_layers

    from napari_xt._writer import NotAnXTLayerError

    plain = Labels(np.zeros((4, 4), np.uint8), name="my labels")
    with pytest.raises(NotAnXTLayerError, match="'my labels' cannot be saved as xT GeoJSON"):
        save_layers(str(tmp_path / "x.geojson"), [plain], plugin="napari-xt")
    assert not list(tmp_path.iterdir())
