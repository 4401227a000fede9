"""The region grid: any slide shape, covered exactly once, stitching back to a direct read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xt_core import MissingMppError, open_slide
from xt_core.tokenize import make_region_grid


def _coverage(grid) -> np.ndarray:
    """How many regions' valid areas cover each target pixel."""
    tw, th = grid.target_dimensions
    rs = grid.region_size
    counts = np.zeros((grid.rows * rs, grid.cols * rs), dtype=np.int32)
    for region in grid:
        vw, vh = region.valid_size
        y, x = region.row * rs, region.col * rs
        counts[y : y + vh, x : x + vw] += 1
    return counts[:th, :tw], counts


@pytest.mark.parametrize("height,width", [(700, 1000), (513, 1), (1, 1), (256, 256), (300, 257)])
def test_grid_covers_any_shape_exactly_once(make_pyramid, height: int, width: int) -> None:
    path, _ = make_pyramid(height, width, levels=1, tile=16)
    with open_slide(path) as slide:
        grid = make_region_grid(slide, target_mpp=None, region_size=256, chunk_size=64)
    assert grid.rows == -(-height // 256) and grid.cols == -(-width // 256)
    inside, everything = _coverage(grid)
    assert (inside == 1).all()
    assert everything.sum() == height * width  # nothing outside the slide counts as valid
    assert [r.index for r in grid] == list(range(grid.n_regions))
    assert [(r.row, r.col) for r in grid] == [(i, j) for i in range(grid.rows) for j in range(grid.cols)]


def test_regions_stitched_back_equal_a_direct_read(cmu_svs: Path, cmu_pixels: np.ndarray) -> None:
    with open_slide(cmu_svs) as slide:
        grid = make_region_grid(slide, target_mpp=None, region_size=384, chunk_size=128)
        canvas = np.zeros((grid.rows * 384, grid.cols * 384, 3), dtype=np.uint8)
        for region in grid:
            canvas[region.row * 384 : (region.row + 1) * 384, region.col * 384 : (region.col + 1) * 384] = grid.read(
                slide, region
            )
    h, w = cmu_pixels.shape[:2]
    np.testing.assert_array_equal(canvas[:h, :w], cmu_pixels)
    assert (canvas[h:] == 255).all() and (canvas[:, w:] == 255).all()  # white padding


def test_grid_snaps_to_a_matching_level(slides_dir: Path) -> None:
    """At ~1 um/px the generic pyramid's level 1 (0.998 um/px) is read directly and tiled exactly.

    (tiffslide here: at a fractional downsample OpenSlide itself renders level pixels with a
    sub-pixel shift, see test_backends_agree_on_pixels.)"""
    with open_slide(slides_dir / "CMU-1-Small-Region_pyramid_generic.tiff", backend="tiffslide") as slide:
        grid = make_region_grid(slide, target_mpp=1.0, region_size=256, chunk_size=128)
        assert grid.read_level == 1 and grid.target_dimensions == slide.level_dimensions[1]
        level1 = slide.read_region((0, 0), 1, slide.level_dimensions[1])
        for index in (0, 7, grid.n_regions - 1):
            region = grid.region(index)
            got = grid.read(slide, region)
            vw, vh = region.valid_size
            y, x = region.row * 256, region.col * 256
            np.testing.assert_array_equal(got[:vh, :vw], level1[y : y + vh, x : x + vw])


def test_resampled_grid_pads_exact_white(slides_dir: Path) -> None:
    with open_slide(slides_dir / "CMU-1-Small-Region.svs") as slide:
        grid = make_region_grid(slide, target_mpp=0.7, region_size=256, chunk_size=128)
        assert grid.read_level is None and grid.scale == pytest.approx((0.7 / 0.499,) * 2)
        last = grid.region(grid.n_regions - 1)
        pixels = grid.read(slide, last)
    vw, vh = last.valid_size
    assert 0 < vw < 256 and 0 < vh < 256
    assert (pixels[vh:] == 255).all() and (pixels[:, vw:] == 255).all()
    assert grid.target_dimensions == (round(2220 * 0.499 / 0.7 + 0.5), round(2967 * 0.499 / 0.7 + 0.5))


def test_target_mpp_needs_the_slide_mpp(slides_dir: Path) -> None:
    with open_slide(slides_dir / "tcga-cr-7395-01a-01-ts1.svs") as slide:
        with pytest.raises(MissingMppError):
            make_region_grid(slide, target_mpp=0.5)
        grid = make_region_grid(slide, target_mpp=None, region_size=512, chunk_size=256)
        assert (grid.rows, grid.cols) == (7, 9)
    with open_slide(slides_dir / "tcga-cr-7395-01a-01-ts1.svs", mpp=0.25) as slide:
        grid = make_region_grid(slide, target_mpp=0.5, region_size=512, chunk_size=256)
        assert grid.read_level == 1


def test_chunks_tile_a_region_row_major() -> None:
    from xt_core.tokenize import RegionGrid

    grid = RegionGrid((100, 100), (100, 100), 512, 256, (1.0, 1.0), None, 1, 1, 0, np.ones(1))
    assert grid.chunks_per_side == 2
    assert grid.chunk_offsets() == [(0, 0), (256, 0), (0, 256), (256, 256)]
    with pytest.raises(ValueError, match="must divide"):
        make_region_grid(None, region_size=512, chunk_size=200)  # type: ignore[arg-type]


def test_tissue_fractions_choose_the_regions(slides_dir: Path) -> None:
    from xt_core.tissue import tissue_mask

    with open_slide(slides_dir / "CMU-1-Small-Region.svs") as slide:
        grid = make_region_grid(slide, target_mpp=0.5, region_size=256, chunk_size=128, tissue=tissue_mask(slide))
    fractions = grid.tissue_fractions
    assert fractions.shape == (grid.n_regions,) and (fractions >= 0).all() and (fractions <= 1).all()
    keep = grid.tissue_indices(0.1)
    assert 0 < len(keep) < grid.n_regions  # the slide has both tissue and glass
    assert (fractions[keep] >= 0.1).all()
    assert list(grid.tissue_indices(None)) == list(range(grid.n_regions))
    assert grid.region(int(keep[0])).tissue_fraction == fractions[keep[0]]


def test_region_boxes_match_each_region(slides_dir: Path) -> None:
    with open_slide(slides_dir / "CMU-1-Small-Region.svs") as slide:
        grid = make_region_grid(slide, target_mpp=0.7, region_size=256, chunk_size=128)
    boxes = grid.region_boxes()
    assert boxes.shape == (grid.n_regions, 4)
    for i in (0, 1, grid.cols, grid.n_regions - 1):
        np.testing.assert_allclose(boxes[i], grid.region(i).box)
