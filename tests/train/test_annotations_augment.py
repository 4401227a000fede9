"""Annotations on the token grid, and region augmentation that moves pixels and targets together."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xt_core import open_slide
from xt_core.inference import _layout_heatmap
from xt_core.tissue import tissue_mask
from xt_core.tokenize import make_region_grid
from xt_core.train.annotations import (
    AnnotationError,
    blocks_to_sequence,
    rasterize_annotation,
    sequence_to_blocks,
)
from xt_core.train.augment import AugmentConfig, augment_blocks, augment_regions, region_params, region_seeds

CLASSES = ["normal", "tumour", "stroma"]


@pytest.fixture
def grid(tmp_path: Path):
    """A 256 x 256 image at its own pixels: 2 x 2 regions of 128 px."""
    Image.fromarray(np.full((256, 256, 3), 200, np.uint8)).save(tmp_path / "s.png")
    with open_slide(tmp_path / "s.png") as s:
        return make_region_grid(s, target_mpp=None, region_size=128, chunk_size=64)


def _square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _write(path: Path, features) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _feature(rings, **props):
    return {"type": "Feature", "properties": props, "geometry": {"type": "Polygon", "coordinates": rings}}


def test_geojson_polygons_holes_and_class_properties(tmp_path: Path, grid) -> None:
    path = _write(tmp_path / "a.geojson", [
        # QuPath style, with a hole over the top-left cell of region 0
        _feature([_square(0, 0, 128, 128), _square(0, 0, 64, 64)], classification={"name": "Tumour"}),
        # label_name style, a single ring written without the ring list, covering region 3's right half
        {"type": "Feature", "properties": {"label_name": "stroma"},
         "geometry": {"type": "Polygon", "coordinates": _square(192, 128, 256, 256)}},
    ])
    t = rasterize_annotation(path, grid, CLASSES, tokens_per_side=2)  # cells of 64 px
    labels = t.labels.reshape(4, 2, 2)  # region, token row, token col
    assert labels[0].tolist() == [[-100, 1], [1, 1]]  # the hole is not annotated
    assert (labels[1] == -100).all() and (labels[2] == -100).all()
    assert labels[3].tolist() == [[-100, 2], [-100, 2]]
    assert t.fractions.shape == (16, 1, 1, 3) and t.annotated == 5
    np.testing.assert_allclose(t.fractions.reshape(4, 2, 2, 3)[0, 1, 1], [0, 1, 0])
    # only some regions, in the order given
    sub = rasterize_annotation(path, grid, CLASSES, tokens_per_side=2, indices=[3, 0])
    np.testing.assert_array_equal(sub.labels.reshape(2, 2, 2), labels[[3, 0]])
    # finer cells: upsample 2 -> 32 px cells, (L, 2, 2) per token
    fine = rasterize_annotation(path, grid, CLASSES, tokens_per_side=2, upsample=2, indices=[3])
    block = sequence_to_blocks(fine.labels, 2)[0]  # (4, 4) cells of region 3
    assert (block[:, 2:] == 2).all() and (block[:, :2] == -100).all()


def test_partial_cells_follow_min_coverage(tmp_path: Path, grid) -> None:
    # 36 of the cell's 64 px: sample centres (16 px apart, at 8, 24, 40, 56) at x 8 and 24 are inside
    path = _write(tmp_path / "a.geojson", [_feature([_square(0, 0, 36, 64)], label="tumour")])

    def first(**kw) -> int:
        return int(rasterize_annotation(path, grid, CLASSES, tokens_per_side=2, **kw).labels[0, 0, 0])

    assert first() == 1  # half the samples annotated: the default min_coverage 0.5
    assert first(min_coverage=0.75) == -100


def test_class_map_and_unknown_classes(tmp_path: Path, grid) -> None:
    path = _write(tmp_path / "a.geojson", [
        _feature([_square(0, 0, 64, 64)], classification={"name": "Tumor"}),
        _feature([_square(64, 0, 128, 64)], classification={"name": "Ignore"}),
        _feature([_square(0, 64, 64, 128)]),
    ])
    with pytest.raises(AnnotationError, match=r"a.geojson: feature 1: class 'Tumor' is not a class of the model"):
        rasterize_annotation(path, grid, CLASSES, tokens_per_side=2)
    t = rasterize_annotation(path, grid, CLASSES, tokens_per_side=2,
                             class_map={"Tumor": "tumour", "Ignore": None, "*": "normal"})
    assert t.labels.reshape(4, 2, 2)[0].tolist() == [[1, -100], [0, -100]]
    with pytest.raises(AnnotationError, match="feature 3 has no class"):
        rasterize_annotation(path, grid, CLASSES, tokens_per_side=2, class_map={"Tumor": "tumour", "Ignore": None})
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(AnnotationError, match="bad.geojson: not readable GeoJSON"):
        rasterize_annotation(tmp_path / "bad.geojson", grid, CLASSES, tokens_per_side=2)
    (tmp_path / "a.txt").write_text("")
    with pytest.raises(AnnotationError, match="unsupported annotation type"):
        rasterize_annotation(tmp_path / "a.txt", grid, CLASSES, tokens_per_side=2)


def test_mask_image_at_any_resolution(tmp_path: Path, grid) -> None:
    mask = np.array([[0, 1, 2, 255], [1, 1, 2, 2], [0, 0, 0, 0], [255, 255, 1, 1]], np.uint8)  # 64 px per pixel
    expected = np.where(mask == 255, -100, mask.astype(np.int64))
    for scale, suffix in ((1, ".png"), (3, ".tif")):
        big = np.kron(mask, np.ones((scale, scale), np.uint8))
        if suffix == ".png":
            Image.fromarray(big).save(tmp_path / f"m{suffix}")
        else:
            import tifffile

            tifffile.imwrite(tmp_path / f"m{suffix}", big)
        t = rasterize_annotation(tmp_path / f"m{suffix}", grid, CLASSES, tokens_per_side=2)
        onehot = np.eye(4, dtype=np.float32)[np.where(t.labels == -100, 3, t.labels)]  # (L, 1, 1, 4)
        laid = _layout_heatmap(onehot, np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), grid, 2)  # as drawn
        np.testing.assert_array_equal(np.where(laid[..., 3] == 1, -100, laid[..., :3].argmax(-1)), expected)
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(AnnotationError, match="bad.png: mask values 7 are not class indices 0..2"):
        rasterize_annotation(tmp_path / "bad.png", grid, CLASSES, tokens_per_side=2)


def test_real_tissue_outline_lies_on_tissue(cmu_svs: Path, shared_data: Path) -> None:
    with open_slide(cmu_svs) as slide:
        tissue = tissue_mask(slide)
        grid = make_region_grid(slide, target_mpp=2.0, region_size=128, chunk_size=64, tissue=tissue)
    path = shared_data / "annotations" / "CMU-1-Small-Region.tissue-outline-a.geojson"
    t = rasterize_annotation(path, grid, ["glass", "tissue"], tokens_per_side=2, class_map={"*": "tissue"})
    # a small outline (about 120 x 125 level-0 px) in cells of 256 level-0 px: seen in the fractions
    covered = t.fractions[..., 1].reshape(grid.n_regions, -1)
    per_region = covered.max(axis=1) > 0
    assert 0 < per_region.sum() < grid.n_regions
    area = covered.sum() * (grid.region_size_level0[0] / 2) ** 2  # level-0 px^2 covered
    assert 0.5 * 116 * 124 < area < 1.2 * 116 * 124
    assert (grid.tissue_fractions[per_region] > 0).all()


def test_blocks_and_sequence_round_trip() -> None:
    seq = np.arange(3 * 4 * 2 * 2).reshape(12, 2, 2)  # 3 regions, t=2, u=2
    blocks = sequence_to_blocks(seq, 2)
    assert blocks.shape == (3, 4, 4)
    np.testing.assert_array_equal(blocks_to_sequence(blocks, 2), seq)
    # the same layout predict_slide draws: token (i, j) sub-cell (a, b) at (i*u + a, j*u + b)
    assert blocks[0, 1, 2] == seq[0 * 4 + 0 * 2 + 1, 1, 0]


# ----------------------------------------------------------------------------- augmentation
def _regions(n: int = 5, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_augmentation_is_a_function_of_the_region_seed() -> None:
    x = _regions()
    cfg = AugmentConfig()
    seeds = region_seeds(1, 2, 3, np.arange(5))
    a = augment_regions(x, seeds, cfg)
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, augment_regions(x, seeds, cfg))
    parts = torch.cat([augment_regions(x[:2], seeds[:2], cfg), augment_regions(x[2:], seeds[2:], cfg)])
    assert torch.equal(a, parts)  # batching does not matter
    assert not torch.equal(a, augment_regions(x, region_seeds(1, 3, 3, np.arange(5)), cfg))  # another epoch
    assert len(set(seeds.tolist()) | set(region_seeds(1, 2, 4, np.arange(5)).tolist())) == 10
    assert torch.equal(augment_regions(x, seeds, AugmentConfig(enabled=False)), x)


def test_colour_free_identity_and_hed_round_trip() -> None:
    x = _regions(2)
    none = AugmentConfig(flip=False, rotate90=False, brightness=0, contrast=0, saturation=0, hue=0,
                         hed_scale=0, hed_shift=0)
    assert not none.active and torch.equal(augment_regions(x, np.array([1, 2]), none), x)
    # HED unmixing and remixing with unit scale and no shift gives the pixels back (to rounding)
    tiny = AugmentConfig(flip=False, rotate90=False, brightness=0, contrast=0, saturation=0, hue=0,
                         hed_scale=1e-9, hed_shift=0)
    y = augment_regions(x, np.array([1, 2]), tiny)
    assert (y.int() - x.int()).abs().max() <= 1


def test_targets_move_with_the_pixels() -> None:
    """Cells of 16 px coloured by their id: after augmentation the target block still names the colour."""
    k, cell = 4, 16
    ids = np.arange(k * k).reshape(k, k)
    image = np.kron(ids, np.ones((cell, cell), np.int64)).astype(np.uint8) * 10 + 5
    x = torch.from_numpy(np.stack([image] * 3)[None].repeat(8, 0))  # (8, 3, 64, 64)
    cfg = AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0, hed_scale=0, hed_shift=0)
    seeds = region_seeds(0, 0, 0, np.arange(8))
    assert {(region_params(int(s), cfg).flip, region_params(int(s), cfg).k) for s in seeds} != {(False, 0)}
    moved = augment_regions(x, seeds, cfg)[:, 0].numpy()  # (8, 64, 64)
    blocks = augment_blocks(np.stack([ids] * 8), seeds, cfg)
    seen = (moved[:, cell // 2 :: cell, cell // 2 :: cell].astype(np.int64) - 5) // 10
    np.testing.assert_array_equal(seen, blocks)
