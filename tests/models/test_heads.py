"""Heads: attention pooling streamed over token chunks equals the whole-sequence pooling."""

from __future__ import annotations

import torch

from xt_core.models.heads import AttentionPoolClassifier, MeanPoolClassifier, SegmentationHead


def test_streamed_pooling_equals_whole_sequence() -> None:
    torch.manual_seed(0)
    tokens = torch.randn(2, 37, 16) * 3
    for head in (AttentionPoolClassifier(16, 3), MeanPoolClassifier(16, 3)):
        whole = head(tokens)
        state = None
        for chunk in tokens.split(5, dim=1):  # O(1) state, whatever the length
            part = head.partial(chunk)
            state = part if state is None else state.merge(part)
        torch.testing.assert_close(head.classify(state), whole, atol=1e-5, rtol=1e-5)


def test_attention_weights_sum_to_one_and_follow_the_scores() -> None:
    torch.manual_seed(1)
    head = AttentionPoolClassifier(8, 2)
    weights = head.attention(torch.randn(1, 10, 8))
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(1))


def test_segmentation_upsampling_shape() -> None:
    head = SegmentationHead(8, 4, upsample=2)
    assert head(torch.randn(1, 6, 8)).shape == (1, 6, 2, 2, 4)
