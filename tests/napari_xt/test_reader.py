"""The napari-xt reader and sample data: lazy multiscale layers from real slides, shown in a real viewer.

The viewer tests need an X server (napari's canvas does not render with QT_QPA_PLATFORM=offscreen):
pytest-xvfb starts Xvfb by itself when the ``Xvfb`` binary is installed (apt package ``xvfb``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_xt._reader import napari_get_reader, slide_layer_data
from xt_core.slide import open_slide

SLIDES = Path(__file__).resolve().parents[2].parent / "shared/data/slides"
CMU = SLIDES / "CMU-1-Small-Region.svs"
READABLE = [
    "CMU-1-Small-Region.svs",
    "CMU-1-Small-Region_pyramid.ome.tiff",
    "CMU-1-Small-Region_pyramid_generic.tiff",
    "OS-1-detail.ome.tif",
    "kidney-48-5.tif",
    "tcga-cr-7395-01a-01-ts1.svs",
    "test3-DAPI-2.ndpi",
]


@pytest.fixture(scope="module")
def slides() -> Path:
    if not SLIDES.is_dir():
        message = f"{SLIDES} not found: the real test data lives in ../shared/data beside the repository"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return SLIDES


def _read(path: Path):
    reader = napari_get_reader(str(path))
    assert reader is not None, path
    layers = reader(str(path))
    assert len(layers) == 1
    data, kwargs, layer_type = layers[0]
    assert layer_type == "image"
    return data, kwargs


# ------------------------------------------------------------------ reader, no viewer
@pytest.mark.parametrize("name", READABLE)
def test_reader_gives_lazy_multiscale_rgb_pyramid(slides: Path, name: str) -> None:
    data, kwargs = _read(slides / name)
    with open_slide(slides / name) as slide:
        assert isinstance(data, list) and len(data) == slide.level_count
        for level, arr in enumerate(data):
            w, h = slide.level_dimensions[level]
            assert arr.shape == (h, w, 3) and arr.dtype == np.uint8
            assert hasattr(arr, "dask")  # lazy: nothing read until napari asks
            assert max(arr.chunksize[:2]) <= 512
        assert kwargs["rgb"] is True and kwargs["multiscale"] is True
        assert kwargs["name"] == slide.name
        assert kwargs["metadata"]["path"] == str(slides / name)
        assert kwargs["metadata"]["slide_info"] == slide.info()
        if slide.mpp is None:
            assert tuple(kwargs["scale"]) == (1.0, 1.0) and "units" not in kwargs
        else:
            assert tuple(kwargs["scale"]) == (slide.mpp[1], slide.mpp[0])
            assert tuple(kwargs["units"]) == ("um", "um")


@pytest.mark.parametrize("name", ["broken.svs", "", "notes.txt", "missing.svs"])
def test_reader_declines_what_it_cannot_read(slides: Path, tmp_path: Path, name: str) -> None:
    if name == "broken.svs":
        path = slides / name
    elif name == "notes.txt":
        path = tmp_path / name
        path.write_text("not a slide\n")
    elif name == "":
        path = slides  # a directory
    else:
        path = tmp_path / name
    assert napari_get_reader(str(path)) is None
    assert napari_get_reader([str(slides / "CMU-1-Small-Region.svs")]) is None  # stacks are not ours


def test_level0_pixels_equal_read_region(slides: Path) -> None:
    data, kwargs = _read(CMU)
    with open_slide(CMU) as slide:
        w, h = slide.dimensions
        level0 = slide.read_region((0, 0), 0, (w, h))
        # a crop across tile borders, and the whole level, exactly
        np.testing.assert_array_equal(data[0][300:1100, 400:1600].compute(), level0[300:1100, 400:1600])
        np.testing.assert_array_equal(data[0].compute(), level0)
        assert tuple(kwargs["scale"]) == pytest.approx((0.499, 0.499))
        assert tuple(kwargs["scale"]) == (slide.mpp[1], slide.mpp[0])


def test_lower_levels_are_the_slide_levels(slides: Path) -> None:
    # tiffslide reads level pixels exactly, so every tile of every level must match
    path = slides / "CMU-1-Small-Region_pyramid.ome.tiff"
    data, _ = _read(path)
    with open_slide(path) as slide:
        assert len(data) == 4
        for level in range(1, slide.level_count):
            w, h = slide.level_dimensions[level]
            np.testing.assert_array_equal(data[level].compute(), slide.read_region((0, 0), level, (w, h)))


def test_synthetic_levels_when_the_coarsest_level_is_large(slides: Path) -> None:
    with open_slide(slides / "OS-1-detail.ome.tif") as slide:  # one level, 1101 x 1101
        data, kwargs, _ = slide_layer_data(slide, tile=256, max_coarsest_side=300)
        assert [a.shape[:2] for a in data] == [(1101, 1101), (550, 550), (275, 275)]
        assert kwargs["metadata"]["synthetic_levels"] == 2
        full = data[0].compute().astype(float)
        expected = full[:1100, :1100].reshape(550, 2, 550, 2, 3).mean(axis=(1, 3)).round()
        np.testing.assert_array_equal(data[1].compute(), expected.astype(np.uint8))
        assert data[2].dtype == np.uint8 and data[2].chunksize[:2] == (256, 256)


# ------------------------------------------------------------------ in a real viewer
def _thumbnail_mean(path: Path) -> np.ndarray:
    with open_slide(path) as slide:
        return slide.get_thumbnail(512).reshape(-1, 3).mean(axis=0)


def _render(viewer) -> np.ndarray:
    viewer.reset_view()
    viewer.screenshot(canvas_only=True, flash=False)  # first render: tiles load, then draw
    shot = viewer.screenshot(canvas_only=True, flash=False)
    return np.asarray(shot)[..., :3]


def test_open_in_viewer_and_render(slides: Path, viewer_factory) -> None:
    # shown (on pytest-xvfb's X server): a hidden canvas renders black under Xvfb + Mesa
    viewer = viewer_factory(show=True)
    layers = viewer.open(str(CMU), plugin="napari-xt")
    assert len(layers) == 1 and len(viewer.layers) == 1
    layer = viewer.layers[0]
    assert layer.name == "CMU-1-Small-Region"
    assert layer.multiscale is True and layer.rgb is True
    assert tuple(layer.scale) == pytest.approx((0.499, 0.499))
    assert str(layer.units[0]) == "micrometer"

    shot = _render(viewer)
    assert shot.std() > 10, "blank screenshot (QT_QPA_PLATFORM must be xcb, not offscreen)"
    # the slide's footprint on the (black) canvas: a box with the slide's aspect ratio
    ys, xs = np.nonzero(shot.max(axis=2) > 20)
    box = shot[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].reshape(-1, 3).astype(float)
    assert (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1) == pytest.approx(2220 / 2967, rel=0.03)
    mean, expected = box.mean(axis=0), _thumbnail_mean(CMU)
    assert np.abs(mean - expected).max() < 10, (mean, expected)
    assert mean[0] > mean[1] + 10 and mean[2] > mean[1] + 5 and mean.min() < 235, f"not pinkish H&E: {mean}"


def test_sample_data_through_npe2(slides: Path, tmp_path: Path, monkeypatch, viewer_factory) -> None:
    # seed the sample cache with the (checksum-identical) shared copy: no network in tests
    monkeypatch.setenv("XT_CACHE_DIR", str(tmp_path))
    shutil.copy(CMU, tmp_path / "CMU-1-Small-Region.svs")

    import npe2

    pm = npe2.PluginManager.instance()
    if "napari-xt" not in pm:
        pm.discover()
    contribs = {s.key: s for s in pm.get_manifest("napari-xt").contributions.sample_data}
    assert "cmu_small_region" in contribs
    (data, kwargs, layer_type), = contribs["cmu_small_region"].open()
    assert layer_type == "image" and kwargs["name"] == "CMU-1-Small-Region" and len(data) == 1

    viewer = viewer_factory()
    viewer.open_sample("napari-xt", "cmu_small_region")
    assert [layer.name for layer in viewer.layers] == ["CMU-1-Small-Region"]
    assert viewer.layers[0].multiscale is True
    assert viewer.layers[0].metadata["path"] == str(tmp_path / "CMU-1-Small-Region.svs")
