"""The analysis widget: a model run on an open slide, its heatmap laid exactly over the slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_xt._widget import XTWidget, heatmap_layer_data, summary_text
from xt_core.inference import predict_slide
from xt_core.settings import RunSettings
from xt_core.models.checkpoint import load_model
from xt_core.slide import open_slide


@pytest.fixture(scope="module")
def cmu_result(cmu_svs: Path, tiny_model_dir: Path):
    with open_slide(cmu_svs) as slide:
        return predict_slide(load_model(tiny_model_dir), slide, RunSettings(batch_size=8))


def test_heatmap_pixels_centre_on_the_slide_pixels_they_cover(cmu_result) -> None:
    """World position of heatmap pixel (i, j)'s centre == world position of the centre of the
    level-0 block it covers, as napari places pixel centres at integer coordinates."""
    from napari.layers import Image, Labels

    mpp = (0.499, 0.499)
    slide_layer = Image(np.zeros((8, 8), np.uint8), scale=(mpp[1], mpp[0]))
    s = cmu_result.token_size[0]
    for data, kwargs, kind in heatmap_layer_data(cmu_result, mpp):
        layer = (Labels if kind == "labels" else Image)(data, **{k: v for k, v in kwargs.items() if k in ("scale", "translate")})
        for i, j in [(0, 0), (3, 5), (data.shape[0] - 1, data.shape[1] - 1)]:
            block_centre = (i * s + (s - 1) / 2, j * s + (s - 1) / 2)  # level-0 pixels (row, col)
            np.testing.assert_allclose(layer.data_to_world((i, j)), slide_layer.data_to_world(block_centre))


def test_layers_mirror_the_result(cmu_result) -> None:
    layers = heatmap_layer_data(cmu_result, (0.499, 0.499))
    labels, kwargs, kind = layers[0]
    assert kind == "labels" and labels.shape == cmu_result.heatmap.shape[:2]
    analysed = ~np.isnan(cmu_result.heatmap[..., 0])
    assert ((labels > 0) == analysed).all()
    np.testing.assert_array_equal(labels[analysed] - 1, np.argmax(cmu_result.heatmap[analysed], axis=-1))
    assert [kw["name"].split(" ")[-1] for _, kw, _ in layers[1:]] == [f"p({c})" for c in cmu_result.classes]
    assert kwargs["units"] == ("um", "um")
    assert summary_text(cmu_result).startswith(f"prediction: {cmu_result.prediction}")


def test_widget_in_a_viewer(viewer_factory, cmu_svs: Path, tiny_model_dir: Path) -> None:
    viewer = viewer_factory(show=True)
    viewer.open(str(cmu_svs), plugin="napari-xt")
    widget = XTWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget._slide_layer.value is viewer.layers[0]
    widget._model.value = str(tiny_model_dir)
    result = widget.analyse()
    names = [layer.name for layer in viewer.layers]
    assert names[1] == "CMU-1-Small-Region.svs xT classes" and len(names) == 2 + len(result.classes)
    assert widget._status.value.startswith("prediction: ")
    # the overlay covers the tissue on screen: the classes layer spans the slide's footprint
    viewer.reset_view()
    slide, heat = viewer.layers[0], viewer.layers[1]
    # outer edge of the first pixel (napari: centre at translate, half a pixel either side)
    slide_corner = np.asarray(slide.translate) - np.asarray(slide.scale) / 2
    heat_corner = np.asarray(heat.translate) - np.asarray(heat.scale) / 2
    np.testing.assert_allclose(heat_corner, slide_corner, atol=1e-6)  # same top-left edge
    slide_far = slide_corner + np.asarray(slide.scale) * np.asarray(slide.data[0].shape[:2])
    heat_far = heat_corner + np.asarray(heat.scale) * np.asarray(heat.data.shape)
    assert (heat_far >= slide_far - 1e-6).all()  # and covers it (regions pad the far edges)
    shot_with = np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(int)
    viewer.layers[1].visible = False
    shot_without = np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(int)
    assert np.abs(shot_with - shot_without).mean() > 1  # the overlay is drawn


def test_widget_without_a_slide_says_so(viewer_factory) -> None:
    viewer = viewer_factory()
    widget = XTWidget(viewer)
    widget._start()
    assert "open a slide first" in widget._status.value


def test_writer_saves_the_classes_layer_where_it_was_drawn(cmu_result, tmp_path: Path) -> None:
    """Saving the widget's classes layer gives the same polygons as the engine's own GeoJSON."""
    import json

    from napari_xt._writer import write_xt_geojson
    from xt_core.outputs.geojson import heatmap_features

    labels, kwargs, _ = heatmap_layer_data(cmu_result, (0.499, 0.499))[0]
    out = tmp_path / "classes.geojson"
    assert write_xt_geojson(str(out), labels, kwargs) == [str(out)]
    written = json.loads(out.read_text())
    heat = cmu_result.heatmap
    onehot = np.zeros_like(heat)
    analysed = ~np.isnan(heat[..., 0])
    onehot[analysed, np.argmax(np.nan_to_num(heat), axis=-1)[analysed]] = 1.0
    expected = heatmap_features(onehot, cmu_result.classes, cmu_result.token_size, origin=cmu_result.origin,
                                bounds=cmu_result.grid.slide_dimensions)
    assert [f["properties"]["name"] for f in written["features"]] == [f["properties"]["name"] for f in expected["features"]]
    for got, want in zip(written["features"], expected["features"]):
        np.testing.assert_allclose(np.concatenate([np.asarray(r) for p in got["geometry"]["coordinates"] for r in p]),
                                   np.concatenate([np.asarray(r) for p in want["geometry"]["coordinates"] for r in p]),
                                   atol=1e-3)


def test_writer_refuses_other_layers(tmp_path: Path) -> None:
    from napari_xt._writer import write_xt_geojson

    with pytest.raises(ValueError, match="only the 'xT classes' layers"):
        write_xt_geojson(str(tmp_path / "x.geojson"), np.zeros((4, 4), np.uint8), {"metadata": {}})
    assert not list(tmp_path.iterdir())
