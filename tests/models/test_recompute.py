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


#: Encoders that train as one autograd node keeping only the tokens (:mod:`recompute`); global
#: attention does where it is non-causal and has no dropout (:mod:`attention_plan`), here with
#: chunks of 8 queries (HyperAttention: two sorted blocks of 8) and of 10 tokens.
ONE_NODE = {
    "transformer_xl": ENCODERS["transformer_xl"],
    "mamba": ENCODERS["mamba"],
    "attention": dict(depth=2, heads=2, query_chunk=8, positions="rope2d"),
    "hyper": dict(depth=2, heads=2, exact_below=0, block_size=8, sample_size=4, query_chunk=16, positions="rope2d"),
}


@pytest.fixture(autouse=True)
def _small_token_chunks(monkeypatch):
    """The attention plan's token-wise chunks: several per sequence at these lengths."""
    from xt_core.models.context import attention_plan

    monkeypatch.setattr(attention_plan, "TOKEN_CHUNK", 10)


def _encoder(name: str, recompute: bool, configs: dict = ENCODERS):
    torch.manual_seed(0)
    return create_context_encoder(name, dim=DIM, recompute=recompute, **configs[name]).double().train()


#: Variants that take other paths through the recomputation: causal XL with 2D RoPE (rotary
#: memory keys), a memory shorter than the segment, Mamba reading by columns, one-way Mamba, and
#: Mamba on a sequence within one segment (checkpointed per layer instead).
VARIANTS = {
    "transformer_xl-rope2d-causal": ("transformer_xl", dict(depth=3, heads=2, segment_len=8, mem_len=8, dropout=0.1,
                                                           causal=True, positions="rope2d")),
    "transformer_xl-short-memory": ("transformer_xl", dict(depth=2, heads=2, segment_len=8, mem_len=5, dropout=0.1)),
    "mamba-alternate": ("mamba", dict(depth=4, d_state=4, segment_len=8, chunk_size=4, scan="alternate")),
    "mamba-one-way": ("mamba", dict(depth=2, d_state=4, segment_len=5, chunk_size=4, bidirectional=False)),
    "mamba-one-segment": ("mamba", dict(depth=3, d_state=4, segment_len=64, chunk_size=4)),  # per-layer checkpoints
    "attention-one-node": ("attention", ONE_NODE["attention"]),
    "attention-one-node-absolute": ("attention", dict(depth=3, heads=2, query_chunk=8)),
    "hyper-one-node": ("hyper", ONE_NODE["hyper"]),
    "hyper-one-node-absolute": ("hyper", dict(depth=2, heads=4, exact_below=0, block_size=8, sample_size=6,
                                              query_chunk=8)),
    "hyper-one-node-exact-layers": ("hyper", dict(depth=2, heads=2, exact_below=64, query_chunk=8)),
    "hyper-one-node-default-chunk": ("hyper", dict(depth=2, heads=2, exact_below=0, block_size=8, sample_size=4,
                                                   query_chunk=None)),
}


def _coords(length: int, width: int = 6) -> torch.Tensor:
    index = torch.arange(length)
    return torch.stack([index // width, index % width], dim=1)


def _gradients(
    name: str, recompute: bool, tokens: torch.Tensor, kwargs: dict | None = None, coords: torch.Tensor | None = None,
    tokens_grad: bool = True,
) -> dict[str, torch.Tensor]:
    if kwargs is None:
        encoder = _encoder(name, recompute)
    else:
        torch.manual_seed(0)
        encoder = create_context_encoder(name, dim=DIM, recompute=recompute, **kwargs).double().train()
    x = tokens.clone().requires_grad_(tokens_grad)
    torch.manual_seed(7)  # dropout / column samples
    out = encoder(x, coords)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    (out * weights).sum().backward()
    grads = {n: p.grad for n, p in encoder.named_parameters()}
    if tokens_grad:
        grads["tokens"] = x.grad
    return grads


def _assert_equal_gradients(plain: dict, recomputed: dict) -> None:
    assert plain.keys() == recomputed.keys()
    for key in plain:
        assert plain[key] is not None and recomputed[key] is not None, key
        scale = plain[key].norm()
        assert (recomputed[key] - plain[key]).norm() <= 1e-6 * scale, key


@pytest.mark.parametrize("name", list(ENCODERS))
def test_recomputed_gradient_equals_plain_backward(name: str) -> None:
    tokens = torch.randn(1, 37, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    plain, recomputed = _gradients(name, False, tokens), _gradients(name, True, tokens)
    _assert_equal_gradients(plain, recomputed)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_recomputed_gradient_equals_plain_backward_in_every_reading_order(variant: str) -> None:
    name, kwargs = VARIANTS[variant]
    tokens = torch.randn(1, 37, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    coords = _coords(37)
    plain = _gradients(name, False, tokens, kwargs, coords)
    recomputed = _gradients(name, True, tokens, kwargs, coords)
    _assert_equal_gradients(plain, recomputed)


@pytest.mark.parametrize("name", list(ONE_NODE))
def test_recomputed_parameter_gradients_with_frozen_tokens(name: str) -> None:
    """Tokens that need no gradient (frozen features): the parameters' gradients still match."""
    tokens = torch.randn(2, 29, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    plain = _gradients(name, False, tokens, ONE_NODE[name], tokens_grad=False)
    recomputed = _gradients(name, True, tokens, ONE_NODE[name], tokens_grad=False)
    _assert_equal_gradients(plain, recomputed)


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


@pytest.mark.parametrize("name", list(ONE_NODE))
def test_one_node_encoders_keep_only_the_tokens(name: str) -> None:
    """Transformer-XL, Mamba and non-causal global attention run as one autograd node: forward keeps
    the tokens, nothing per segment, chunk or layer (their outputs, memories, states, keys and values
    are rebuilt in backward)."""
    tokens_bytes = 256 * DIM * 8
    assert _saved_bytes(_encoder(name, True, ONE_NODE), 256) == tokens_bytes


@pytest.mark.parametrize("name", ["attention", "hyper"])
def test_global_attention_with_dropout_or_causal_keeps_per_layer_checkpoints(name: str) -> None:
    """Dropout drawn over the whole sequence, and the causal recursion, are not chunked: those
    encoders checkpoint each layer (their gradients are tested equal above, ENCODERS)."""
    from xt_core.models.context import attention_plan

    assert not attention_plan.applies(_encoder(name, True), 256)
    assert attention_plan.applies(_encoder(name, True, ONE_NODE), 256)
    assert not attention_plan.applies(_encoder(name, True, ONE_NODE), 8)  # one chunk: nothing to gain


def test_no_recomputation_without_autograd() -> None:
    encoder = _encoder("transformer_xl", True)
    with torch.no_grad():
        assert _saved_bytes(encoder, 64) == 0


@pytest.mark.parametrize("name", list(ONE_NODE))
def test_a_retained_graph_backs_up_twice(name: str) -> None:
    """``backward(retain_graph=True)`` then ``backward()``: the one-node pass runs its backward twice,
    giving twice the plain gradient."""
    tokens = torch.randn(1, 29, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    grads = {}
    for recompute in (False, True):
        encoder = _encoder(name, recompute, ONE_NODE)
        x = tokens.clone().requires_grad_()
        torch.manual_seed(7)
        loss = (encoder(x) * torch.linspace(-1, 1, x.numel(), dtype=x.dtype).view_as(x)).sum()
        loss.backward(retain_graph=True)
        loss.backward()
        grads[recompute] = x.grad
    assert (grads[True] - grads[False]).norm() <= 1e-9 * grads[False].norm()


def _autocast_gradients(name: str, kwargs: dict, recompute: bool) -> list[torch.Tensor]:
    """The tokens' then the parameters' gradients of a float32 encoder run under CPU autocast (bf16)."""
    tokens = torch.randn(2, 29, DIM, generator=torch.Generator().manual_seed(6))
    torch.manual_seed(0)
    encoder = create_context_encoder(name, dim=DIM, recompute=recompute, **kwargs).train()
    x = tokens.requires_grad_()
    torch.manual_seed(7)
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        out = encoder(x)
    (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return [x.grad] + [p.grad for p in encoder.parameters()]


@pytest.mark.parametrize("name", ["transformer_xl", "mamba"])
def test_recomputed_gradient_under_autocast_is_the_plain_one(name: str) -> None:
    """Under CPU autocast (bfloat16) the pieces are rebuilt at the precision forward had and their
    vector-Jacobian products taken outside autocast, as plain autograd does: the tokens' gradient is
    the plain one exactly, the parameters' up to float32 summation order."""
    plain, recomputed = (_autocast_gradients(name, ENCODERS[name], recompute) for recompute in (False, True))
    assert torch.equal(recomputed[0], plain[0])
    for a, b in zip(plain[1:], recomputed[1:]):
        assert (b - a).norm() <= 1e-5 * a.norm()


def test_chunk_gradients_are_summed_apart_from_the_incoming_ones() -> None:
    """A chunk output that is a parameter plus a per-chunk term: autograd may hand the incoming
    gradient itself back as the parameter's, which the sum must not write into."""
    from xt_core.models.context.recompute import chunked_pass

    module = torch.nn.Module()
    module.p = torch.nn.Parameter(torch.zeros(1, 3))
    x = torch.randn(1, 12, 3)
    parts = chunked_pass(lambda piece: (piece.sum(1) + module.p,), x, 4, module)
    sum(part[0].sum() for part in parts).backward()
    assert torch.equal(module.p.grad, torch.full((1, 3), 3.0))


@pytest.mark.parametrize("name", ["attention", "hyper"])
def test_global_attention_one_node_under_autocast(name: str) -> None:
    """Under CPU autocast (bfloat16) the attention plan rebuilds its layers at forward's precision:
    its chunks round differently from plain autograd's whole-sequence products (measured ~2e-3), while
    a float32 pass differs from both by ~2e-2 (HyperAttention), so the bound tells them apart."""
    plain, recomputed = (_autocast_gradients(name, ONE_NODE[name], recompute)[0] for recompute in (False, True))
    assert (recomputed - plain).norm() <= 5e-3 * plain.norm()
