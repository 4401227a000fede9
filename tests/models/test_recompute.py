"""Recomputation in training: every context encoder's gradient equals a plain backward pass
(float64, 1e-6 relative, dropout and HyperAttention's column samples replayed), while autograd
keeps a fraction of what it kept."""

from __future__ import annotations

import pytest
import torch

from xt_core.models.context import create_context_encoder

DIM = 16

ENCODERS = {
    "transformer_xl": dict(depth=2, heads=2, segment_len=8, mem_len=8, dropout=0.1),
    "mamba": dict(depth=3, d_state=4, segment_len=8, chunk_size=4),
    "attention": dict(depth=2, heads=2, dropout=0.1),
    "hyper": dict(depth=2, heads=2, dropout=0.1, exact_below=0, block_size=8, sample_size=4, causal=True),
}


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _encoder(name: str, recompute: bool):
    torch.manual_seed(0)
    return create_context_encoder(name, dim=DIM, recompute=recompute, **ENCODERS[name]).double().train()


def _gradients(name: str, recompute: bool, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    encoder = _encoder(name, recompute)
    x = tokens.clone().requires_grad_()
    torch.manual_seed(7)  # dropout / column samples
    out = encoder(x)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    (out * weights).sum().backward()
    grads = {n: p.grad for n, p in encoder.named_parameters()}
    grads["tokens"] = x.grad
    return grads


@pytest.mark.parametrize("name", list(ENCODERS))
def test_recomputed_gradient_equals_plain_backward(name: str) -> None:
    tokens = torch.randn(1, 37, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    plain, recomputed = _gradients(name, False, tokens), _gradients(name, True, tokens)
    assert plain.keys() == recomputed.keys()
    for key in plain:
        assert plain[key] is not None and recomputed[key] is not None, key
        scale = plain[key].norm()
        assert (recomputed[key] - plain[key]).norm() <= 1e-6 * scale, key


def _saved_bytes(encoder: torch.nn.Module, length: int) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    x = torch.randn(1, length, DIM, dtype=torch.float64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        encoder(x)
    return total


@pytest.mark.parametrize("name", list(ENCODERS))
def test_recomputation_keeps_a_fraction_of_the_activations(name: str) -> None:
    plain, recomputed = (_saved_bytes(_encoder(name, flag), 256) for flag in (False, True))
    assert recomputed * 4 < plain, (recomputed, plain)


def test_no_recomputation_without_autograd() -> None:
    encoder = _encoder("transformer_xl", True)
    with torch.no_grad():
        assert _saved_bytes(encoder, 64) == 0
