"""A quick look at a slide's segmentation while it is still being read: the growing preview.

The context encoder needs every region before it can say anything, which takes the whole
run; the segmentation head, though, reads any token. Applied to a batch's region tokens
*before* context (what :func:`xt_core.inference.predict_slide` hands its ``on_batch``
callback), it gives a per-token class guess at once, so a viewer can paint the heatmap as it
grows and replace it with the refined, context-aware result at the end. It is a preview only:
without context the classes can differ from the final ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from xt_core.models.xt import XTModel

__all__ = ["place_regions", "region_probabilities"]


def region_probabilities(model: "XTModel", tokens: "torch.Tensor") -> np.ndarray | None:
    """Class probabilities ``(k, s, s, C)`` of ``k`` regions' pre-context tokens ``(k, t*t, D)``.

    ``s`` is ``tokens_per_side * seg_upsample``: one block per region, laid out as the final
    heatmap is (tokens row-major inside the region, each token's ``u x u`` sub-tokens in
    place). None for a model without a segmentation head.
    """
    import torch

    if model.segmenter is None:
        return None
    t = model.tokens_per_side
    k = tokens.shape[0]
    param = next(model.segmenter.parameters())
    with torch.inference_mode():
        seq = tokens.reshape(1, k * t * t, -1).to(device=param.device, dtype=param.dtype)
        logits = model.segmenter(seq)[0]  # (k*t*t, u, u, C)
        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
    return token_blocks(probs, t)


def token_blocks(per_token: np.ndarray, t: int) -> np.ndarray:
    """Per-token values ``(k*t*t, u, u, C)`` of k regions, in sequence order -> one block per
    region ``(k, t*u, t*u, C)``, laid out as on the slide. The final heatmap uses it too."""
    _, u, _, c = per_token.shape
    k = per_token.shape[0] // (t * t)
    return per_token.reshape(k, t, t, u, u, c).transpose(0, 1, 3, 2, 4, 5).reshape(k, t * u, t * u, c)


def place_regions(canvas: np.ndarray, rows: np.ndarray, cols: np.ndarray, blocks: np.ndarray) -> None:
    """Write region blocks ``(k, s, s, ...)`` into a heatmap-shaped ``canvas`` at grid (row, col)."""
    s = blocks.shape[1]
    for r, c, block in zip(np.asarray(rows).tolist(), np.asarray(cols).tolist(), blocks):
        canvas[r * s : (r + 1) * s, c * s : (c + 1) * s] = block
