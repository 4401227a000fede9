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


def test_forward_pools_in_chunks_equal_to_all_at_once(monkeypatch) -> None:
    """The heads' own forward streams (what inference and training call); chunks change nothing."""
    from xt_core.models import heads

    torch.manual_seed(2)
    tokens = torch.randn(2, 50, 16, dtype=torch.float64, requires_grad=True)
    for head in (AttentionPoolClassifier(16, 3).double(), MeanPoolClassifier(16, 3).double()):
        monkeypatch.setattr(heads, "POOL_CHUNK", 1000)
        whole = head(tokens)
        (grad_whole,) = torch.autograd.grad(whole.square().sum(), tokens)
        monkeypatch.setattr(heads, "POOL_CHUNK", 7)
        chunked = head(tokens)
        (grad_chunked,) = torch.autograd.grad(chunked.square().sum(), tokens)
        torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad_chunked, grad_whole, rtol=1e-10, atol=1e-12)


def test_chunked_training_gradients_equal_one_pass(monkeypatch) -> None:
    """Under autograd the chunks run as one recomputing node: the tokens' and every parameter's
    gradient equal those of one pass (float64), for all three heads, upsampled segmentation too."""
    from xt_core.models import heads

    def gradients(chunk: int) -> list[torch.Tensor]:
        monkeypatch.setattr(heads, "POOL_CHUNK", chunk)
        torch.manual_seed(3)
        modules = (AttentionPoolClassifier(16, 3), SegmentationHead(16, 3, upsample=2), MeanPoolClassifier(16, 3))
        modules = [m.double() for m in modules]
        tokens = torch.randn(2, 50, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
        tokens.requires_grad_()
        weights = torch.linspace(-1, 1, 3, dtype=torch.float64)
        segmentation = modules[1](tokens)
        ramp = torch.linspace(-1, 1, segmentation.numel(), dtype=torch.float64).view_as(segmentation)
        loss = (modules[0](tokens) * weights).sum() + (segmentation * ramp).sum() + modules[2](tokens).square().sum()
        loss.backward()
        return [tokens.grad] + [p.grad for m in modules for p in m.parameters()]

    whole, chunked = gradients(1000), gradients(7)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
