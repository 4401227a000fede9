"""The fast read path: whole-factor snapping with a box filter, strips of neighbouring regions,
and direct tile reads, each equal to the plain read it replaces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xt_core import open_slide
from xt_core.slide.resample import shrink_by, whole_factor
from xt_core.slide.synthetic import Island, write_synthetic_slide
from xt_core.slide.tiles import TiffTiles
from xt_core.tokenize import make_region_grid


@pytest.fixture(scope="module")
def slide_40x(tmp_path_factory) -> Path:
    """A 3000 x 2100 px JPEG pyramid at 0.25 um/px (40x), tissue over most of it, ragged edges."""
    path = tmp_path_factory.mktemp("read") / "forty.tif"
    return write_synthetic_slide(path, 3000, 2100, mpp=0.25, levels=(1, 4), islands=[Island(1500, 1050, 1600, 1200)])


def test_whole_factor() -> None:
    assert whole_factor(2.0) == 2 and whole_factor(1.99) == 2 and whole_factor(0.995) == 1
    assert whole_factor(1.5) is None and whole_factor(2.1) is None and whole_factor(0.4) is None


def test_shrink_by_is_the_rounded_block_mean() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    expected = np.floor(pixels.reshape(3, 2, 5, 2, 3).astype(np.float64).mean(axis=(1, 3)) + 0.5)
    np.testing.assert_allclose(shrink_by(pixels, 2), expected, atol=1)
    assert shrink_by(pixels, 1) is pixels
    assert shrink_by(pixels[:5, :9], 2).shape == (3, 5, 3)  # partial blocks at the edges


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_40x_slide_for_a_20x_model_snaps_and_box_filters(slide_40x: Path, backend: str) -> None:
    with open_slide(slide_40x, backend=backend) as slide:
        grid = make_region_grid(slide, target_mpp=0.5, region_size=224, chunk_size=224)
        assert (grid.read_level, grid.read_factor, grid.scale) == (0, 2, (2.0, 2.0))
        assert grid.target_dimensions == (1500, 1050) and (grid.rows, grid.cols) == (5, 7)
        level0 = slide.read_region((0, 0), 0, slide.dimensions)
        # every region, read one by one, is the box-filtered level 0 (here libjpeg's 1/2 scale
        # decode: within a grey level on average), white past the slide
        expected = np.full((grid.rows * 224, grid.cols * 224, 3), 255, dtype=np.uint8)
        expected[:1050, :1500] = shrink_by(level0, 2)
        got = np.zeros_like(expected)
        for region in grid:
            r, c = region.row * 224, region.col * 224
            got[r : r + 224, c : c + 224] = grid.read(slide, region)
        _close(got, expected)
        assert (got[1050:] == 255).all() and (got[:, 1500:] == 255).all()
        # and read_region_at_mpp takes the same path
        np.testing.assert_array_equal(slide.read_region_at_mpp((448, 448), (224, 224), 0.5), got[224:448, 224:448])


def _close(a: np.ndarray, b: np.ndarray) -> None:
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.mean() < 1.0 and diff.max() <= 40, (diff.mean(), diff.max())


@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "CMU-1-Small-Region_pyramid.ome.tiff"])
def test_jpeg_tiles_decode_at_half_size_in_the_right_colours(slides_dir: Path, name: str) -> None:
    """libjpeg's 1/2 decode of SVS tiles (RGB inside the JPEG, told so by an Adobe marker) and of
    YCbCr tiles equals the full decode box-filtered, within a grey level on average."""
    with open_slide(slides_dir / name) as slide:
        assert slide._tiles is not None and slide._tiles.can_shrink(0, 2)
        w, h = (v // 2 * 2 for v in slide.dimensions)
        half = slide.read_region_shrunk((0, 0), 0, (w, h), 2)
        assert half.shape == (h // 2, w // 2, 3)
        _close(half, shrink_by(slide.read_region((0, 0), 0, (w, h)), 2))
        # a box that leaves the slide is read in full, padded white, then box-filtered
        W, H = slide.dimensions
        edge = slide.read_region_shrunk((W - 64, H - 64), 0, (128, 128), 2)
        np.testing.assert_array_equal(edge, shrink_by(slide.read_region((W - 64, H - 64), 0, (128, 128)), 2))
        assert (edge[33:] == 255).all() and (edge[:, 33:] == 255).all()


@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "CMU-1-Small-Region_pyramid.ome.tiff"])
def test_both_jpeg_decoders_give_the_same_pixels(slides_dir: Path, name: str) -> None:
    """simplejpeg (the fast path) and Pillow's draft mode (the fallback) decode a real RGB SVS
    tile and a YCbCr one identically, in full and at 1/2 and 1/4, and in full like tifffile."""
    import os

    from xt_core.slide import tiles

    assert tiles._simplejpeg is not None  # a dependency: the fast path is the one tested
    with open_slide(slides_dir / name) as slide:
        page = slide._tiles._pages[0]
        counts = np.asarray(page.databytecounts)
        for index in (int(np.argmax(counts)), 0):
            data = os.pread(slide._tiles._fd, int(counts[index]), int(page.dataoffsets[index]))
            stream = tiles._jpeg_stream(data, page)
            for k in (1, 2, 4):
                fast = tiles._jpeg_scaled(data, page, k)
                size = (page.tilewidth // k, page.tilelength // k)
                assert fast.shape == (size[1], size[0], 3)
                np.testing.assert_array_equal(fast, tiles._pillow_scaled(stream, size))
            full = page.decode(data, index, jpegtables=page.jpegtables)[0]
            np.testing.assert_array_equal(tiles._jpeg_scaled(data, page, 1), full.reshape(full.shape[-3:]))


def test_strips_equal_single_reads_in_any_grouping(slide_40x: Path) -> None:
    with open_slide(slide_40x) as slide:
        grid = make_region_grid(slide, target_mpp=0.5, region_size=224, chunk_size=224)
        singles = np.stack([grid.read(slide, i) for i in range(grid.n_regions)])
        for indices in (np.arange(grid.n_regions), np.array([0, 1, 2, 5, 6, 7, 8, 13, 20, 33, 34]), np.array([6, 7])):
            np.testing.assert_array_equal(grid.read_many(slide, indices), singles[indices])


def test_direct_tiles_equal_the_backends(slide_40x: Path, slides_dir: Path, monkeypatch) -> None:
    """Direct reads give the same pixels as tiffslide (the same decoder) and as OpenSlide
    through its own decoder (where the downsamples are whole: see test_slide for fractional)."""
    cases = [(slide_40x, "openslide"), (slide_40x, "tiffslide"),
             (slides_dir / "CMU-1-Small-Region.svs", "openslide"),
             (slides_dir / "CMU-1-Small-Region_pyramid.ome.tiff", "tiffslide")]
    for path, backend in cases:
        boxes = [(0, 0, 300, 200), (517, 211, 640, 512), (1, 1, 1, 1)]
        with open_slide(path, backend=backend) as fast:
            assert fast._tiles is not None and 0 in fast._tiles.levels
            got = [fast.read_region((x, y), 0, (w, h)) for x, y, w, h in boxes]
        monkeypatch.setenv("XT_DIRECT_TILES", "0")
        with open_slide(path, backend=backend) as plain:
            assert plain._tiles is None
            want = [plain.read_region((x, y), 0, (w, h)) for x, y, w, h in boxes]
        monkeypatch.delenv("XT_DIRECT_TILES")
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_tile_cache_is_bounded_and_reused(slide_40x: Path) -> None:
    with open_slide(slide_40x) as slide:
        tiles = TiffTiles(slide_40x, slide.level_dimensions, cache_bytes=3 * 256 * 256 * 3)
        first = tiles.read(0, 0, 0, 512, 256)  # two tiles
        assert len(tiles._cache) == 2
        np.testing.assert_array_equal(tiles.read(0, 0, 0, 512, 256), first)
        tiles.read(0, 0, 256, 1024, 256)  # four more: the oldest go
        assert len(tiles._cache) == 3 and tiles._cache_bytes <= 3 * 256 * 256 * 3
        tiles.close()


def test_files_without_usable_tiles_keep_the_backend(slides_dir: Path) -> None:
    """JPEG 2000 SVS and NDPI are left to the slide libraries; closing releases the tiles."""
    for name in ("tcga-cr-7395-01a-01-ts1.svs", "test3-DAPI-2.ndpi"):
        with open_slide(slides_dir / name) as slide:
            assert slide._tiles is None
            assert slide.read_region((0, 0), 0, (64, 64)).shape == (64, 64, 3)
    slide = open_slide(slides_dir / "CMU-1-Small-Region.svs")
    slide.close()
    assert slide._tiles is None
