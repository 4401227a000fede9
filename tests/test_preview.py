"""The growing preview: the segmentation head on pre-context tokens, laid out as the final heatmap."""

from __future__ import annotations

import numpy as np
import torch

from xt_core.inference import _layout_heatmap
from xt_core.models.config import XTConfig
from xt_core.models.xt import create_model
from xt_core.preview import place_regions, region_probabilities


def test_preview_blocks_are_laid_out_like_the_final_heatmap(make_pyramid) -> None:
    from xt_core.slide import open_slide
    from xt_core.tokenize import make_region_grid

    torch.manual_seed(0)
    model = create_model(XTConfig(classes=["a", "b"], region_size=64, chunk_size=64, target_mpp=None,
                                  context_encoder="attention", context_dim=16, context_kwargs={"depth": 1},
                                  seg_upsample=2)).eval()
    t, u = model.tokens_per_side, 2
    tokens = torch.randn(5, t * t, 16)
    probs = region_probabilities(model, tokens)
    assert probs.shape == (5, t * u, t * u, 2)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)
    # the same per-token outputs through the engine's own final layout
    with torch.inference_mode():
        seg = torch.softmax(model.segmenter(tokens.reshape(1, -1, 16)).float(), dim=-1)[0].numpy()
    path, _ = make_pyramid(256, 320)
    with open_slide(path) as slide:
        grid = make_region_grid(slide, target_mpp=None, region_size=64, chunk_size=64)
    rows, cols = np.array([0, 0, 1, 3, 2]), np.array([0, 4, 2, 1, 3])
    expected = _layout_heatmap(seg, rows, cols, grid, t)
    canvas = np.full(expected.shape, np.nan, np.float32)
    place_regions(canvas, rows, cols, probs)
    np.testing.assert_allclose(canvas, expected, atol=1e-6)


def test_no_preview_without_a_segmentation_head() -> None:
    model = create_model(XTConfig(classes=["a", "b"], region_size=64, chunk_size=64, context_encoder="attention",
                                  context_dim=16, context_kwargs={"depth": 1}, segmentation=False)).eval()
    assert region_probabilities(model, torch.zeros(2, 4, 16)) is None
