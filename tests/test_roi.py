"""Regions of interest: boxes under polygons, exactly (touching is not overlapping)."""

from __future__ import annotations

import numpy as np

from xt_core.roi import boxes_in_polygons, rectangle, regions_in_shapes, token_boxes, tokens_in_shapes


def _grid_boxes(n: int, size: float = 10.0) -> np.ndarray:
    return token_boxes((n, n), (size, size))


def test_a_rectangle_along_borders_selects_the_boxes_inside_only() -> None:
    boxes = _grid_boxes(5)
    chosen = boxes_in_polygons(boxes, [rectangle(10, 10, 30, 20)]).reshape(5, 5)
    expected = np.zeros((5, 5), bool)
    expected[1, 1:3] = True
    np.testing.assert_array_equal(chosen, expected)
    # a hair more reaches the neighbours; a rectangle inside one box selects it
    assert boxes_in_polygons(boxes, [rectangle(10, 10, 30.01, 20)]).reshape(5, 5)[1, 3]
    assert boxes_in_polygons(boxes, [rectangle(41, 41, 42, 42)]).reshape(5, 5)[4, 4]


def test_concave_polygons_crossing_edges_and_degenerate_shapes() -> None:
    boxes = _grid_boxes(4)
    # an L: the box in its notch is not selected although the L's bounding box covers it
    ell = np.array([[0, 0], [40, 0], [40, 10], [10, 10], [10, 40], [0, 40]], float)
    chosen = boxes_in_polygons(boxes, [ell]).reshape(4, 4)
    assert chosen[0].all() and chosen[:, 0].all() and not chosen[1:, 1:].any()
    # a box wholly inside a big triangle (no edge enters it) is found by its centre
    tri = np.array([[-100, -100], [300, -100], [-100, 300]], float)
    assert boxes_in_polygons(boxes, [tri]).all()
    # a thin diagonal polygon touches boxes it passes through, not the others
    sliver = np.array([[0.5, 0.5], [39.5, 39.4], [39.5, 39.6]], float)
    diag = boxes_in_polygons(boxes, [sliver]).reshape(4, 4)
    assert diag[np.arange(4), np.arange(4)].all() and diag.sum() <= 4 + 3 * 2
    # lines, points and empty input select nothing
    assert not boxes_in_polygons(boxes, [np.array([[0, 0], [40, 40]])]).any()
    assert not boxes_in_polygons(boxes, [np.array([[0, 0], [20, 20], [40, 40]])]).any()
    assert not boxes_in_polygons(boxes, []).any()


def test_brute_force_agreement() -> None:
    """Overlap with positive area, checked against scikit-image's point-in-polygon on sampled points."""
    from skimage.measure import points_in_poly

    rng = np.random.default_rng(3)
    boxes = _grid_boxes(6)
    for _ in range(10):
        poly = rng.uniform(-5, 65, size=(rng.integers(3, 8), 2))
        chosen = boxes_in_polygons(boxes, [poly])
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            xs, ys = np.meshgrid(np.linspace(x0 + 0.05, x1 - 0.05, 40), np.linspace(y0 + 0.05, y1 - 0.05, 40))
            hit = points_in_poly(np.stack([xs.ravel(), ys.ravel()], axis=1), poly).any()
            if hit:  # sampled points inside: the box must be chosen (the converse needs finer sampling)
                assert chosen[k], (poly, k)


def test_regions_in_shapes_ignores_the_padding(make_pyramid) -> None:
    from xt_core.slide import open_slide
    from xt_core.tokenize import make_region_grid

    path, _ = make_pyramid(700, 900)
    with open_slide(path) as slide:
        grid = make_region_grid(slide, target_mpp=0.5, region_size=256, chunk_size=128)
    assert (grid.rows, grid.cols) == (3, 4)
    # below the slide (y > 700) but inside the padded last row of regions: nothing
    assert not regions_in_shapes(grid, [rectangle(0, 701, 900, 760)]).any()
    chosen = regions_in_shapes(grid, [rectangle(300, 300, 520, 400)]).reshape(3, 4)
    assert chosen.sum() == 2 and chosen[1, 1] and chosen[1, 2]
    inside = tokens_in_shapes((6, 8), (128.0, 128.0), [rectangle(300, 300, 520, 400)])
    assert inside.sum() == 6 and inside[2:4, 2:5].all()
