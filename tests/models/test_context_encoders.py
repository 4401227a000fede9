"""Tests for the ``attention`` and ``transformer_xl`` context encoders.

Each test checks a property that a plausible bug would break: memory that is computed but
not carried (the official xT bug), memory truncated wrongly, a relative shift that is only
right for causal attention, query chunking that changes results, gradients leaking into
memory, and lengths that are not a multiple of the segment length.
"""

from __future__ import annotations

import math

import pytest
import torch

from xt_core.models.context import ContextEncoder, create_context_encoder
from xt_core.models.context.attention import AttentionContext
from xt_core.models.context.transformer_xl import (
    RelativeAttention,
    TransformerXLContext,
    relative_distances,
    relative_shift,
)

DIM = 32
ATOL = 1e-5


def make_xl(**overrides) -> TransformerXLContext:
    """A small seeded Transformer-XL in eval mode; ``overrides`` replace the defaults."""
    torch.manual_seed(0)
    kwargs = dict(dim=DIM, depth=2, heads=2, mlp_ratio=2.0, segment_len=4)
    kwargs.update(overrides)
    return TransformerXLContext(**kwargs).eval()


def make_attention(**overrides) -> AttentionContext:
    torch.manual_seed(0)
    kwargs = dict(dim=DIM, depth=2, heads=2, mlp_ratio=2.0)
    kwargs.update(overrides)
    return AttentionContext(**kwargs).eval()


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, DIM, generator=generator)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# --------------------------------------------------------------------------------------
# 1. Memory really carries.


@pytest.mark.parametrize("mem_len", [4, 0])
def test_xl_perturbing_one_segment_reaches_next_segment_only_through_memory(mem_len: int) -> None:
    model = make_xl(mem_len=mem_len, segment_len=4)
    x = tokens(2, 16)  # four segments of 4
    y = x.clone()
    y[:, 4:8] += torch.randn(2, 4, DIM)  # change segment 1 only
    with torch.no_grad():
        out_x, out_y = model(x), model(y)
    assert torch.equal(out_x[:, :4], out_y[:, :4]), "an earlier segment must not see a later one"
    assert max_diff(out_x[:, 4:8], out_y[:, 4:8]) > 1e-3
    if mem_len:
        assert max_diff(out_x[:, 8:12], out_y[:, 8:12]) > 1e-3, "memory did not carry to segment 2"
    else:
        assert torch.equal(out_x[:, 8:], out_y[:, 8:]), "mem_len=0 must make segments independent"


def test_xl_forward_segment_returns_the_new_memory() -> None:
    model = make_xl(mem_len=6, segment_len=4)
    seg1, seg2 = tokens(2, 4, seed=1), tokens(2, 4, seed=2)
    empty = model.init_memory(2, torch.device("cpu"), torch.float32)
    assert [m.shape for m in empty] == [(2, 0, DIM)] * 2
    with torch.no_grad():
        _, mem1 = model.forward_segment(seg1, empty)
        _, mem2 = model.forward_segment(seg2, mem1)
        layer0_out = model.blocks[0](seg1, empty[0])
    # Layer 0 remembers its input (the tokens); layer 1 remembers layer 0's output.
    assert torch.equal(mem1[0], seg1)
    assert torch.allclose(mem1[1], layer0_out, atol=ATOL)
    # Truncated to the last mem_len=6 tokens of everything seen so far.
    assert mem2[0].shape == (2, 6, DIM)
    assert torch.equal(mem2[0], torch.cat([seg1, seg2], dim=1)[:, -6:])


def test_xl_forward_equals_streaming_segments() -> None:
    model = make_xl(mem_len=5, segment_len=4)
    x = tokens(2, 11)  # segments of 4, 4, 3
    with torch.no_grad():
        whole = model(x)
        memory = model.init_memory(2, x.device, x.dtype)
        parts = []
        for segment in x.split(4, dim=1):
            out, memory = model.forward_segment(segment, memory)
            parts.append(out)
    assert torch.allclose(whole, torch.cat(parts, dim=1), atol=ATOL)


# --------------------------------------------------------------------------------------
# 2. Memory covering the sequence, and relative positions done right.


def test_xl_memory_length_sets_how_far_back_the_last_segment_sees() -> None:
    x = tokens(1, 12)  # three segments of 4
    y = x.clone()
    y[:, :4] += torch.randn(1, 4, DIM)  # change the FIRST segment only
    with torch.no_grad():
        full = make_xl(depth=1, segment_len=4, mem_len=12)
        assert max_diff(full(x)[:, 8:], full(y)[:, 8:]) > 1e-3, "last segment must see the first"
        # One layer, memory of one segment: the last segment cannot reach segment 0.
        short = make_xl(depth=1, segment_len=4, mem_len=4)
        assert torch.equal(short(x)[:, 8:], short(y)[:, 8:])
        # Two layers: the receptive field grows by one segment per layer (as in XL).
        deep = make_xl(depth=2, segment_len=4, mem_len=4)
        assert max_diff(deep(x)[:, 8:], deep(y)[:, 8:]) > 1e-4


def test_xl_one_segment_equals_forward_segment_with_empty_memory() -> None:
    model = make_xl(segment_len=64, mem_len=64)
    x = tokens(2, 10)
    with torch.no_grad():
        out, _ = model.forward_segment(x, model.init_memory(2, x.device, x.dtype))
        assert torch.allclose(model(x), out, atol=ATOL)
        assert torch.allclose(model.forward_segment(x)[0], out, atol=ATOL)  # memory=None


def test_relative_shift_is_an_exact_gather() -> None:
    qlen, klen = 5, 9
    scores = torch.randn(2, 3, qlen, qlen + klen - 1)
    # Key j of query i is at distance (klen - qlen + i) - j, i.e. index qlen - 1 - i + j.
    index = (qlen - 1) - torch.arange(qlen)[:, None] + torch.arange(klen)[None, :]
    expected = scores.gather(-1, index.expand(2, 3, qlen, klen))
    assert torch.equal(relative_shift(scores, klen), expected)
    distances = relative_distances(qlen, klen)
    assert distances[0] == klen - 1 and distances[-1] == -(qlen - 1)


def naive_relative_attention(
    attn: RelativeAttention, x: torch.Tensor, context: torch.Tensor
) -> torch.Tensor:
    """Transformer-XL attention written straight from the formula, with explicit distances."""
    batch, qlen, dim = x.shape
    klen = context.shape[1]
    heads, head_dim = attn.heads, attn.head_dim
    q = attn.q(x).view(batch, qlen, heads, head_dim)
    k, v = attn.kv(context).view(batch, klen, 2, heads, head_dim).unbind(2)
    # distance[i, j] = absolute position of query i minus that of key j, (qlen, klen).
    distance = (klen - qlen + torch.arange(qlen))[:, None] - torch.arange(klen)[None, :]
    freqs = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = distance[..., None].float() * freqs
    embedding = torch.cat([angles.sin(), angles.cos()], dim=-1)  # (qlen, klen, dim)
    r = attn.r(embedding).view(qlen, klen, heads, head_dim)
    content = torch.einsum("bihd,bjhd->bhij", q + attn.r_w_bias, k)
    position = torch.einsum("bihd,ijhd->bhij", q + attn.r_r_bias, r)
    scores = (content + position) / math.sqrt(head_dim)
    if attn.causal:
        scores = scores.masked_fill(distance < 0, float("-inf"))
    out = torch.einsum("bhij,bjhd->bihd", scores.softmax(dim=-1), v)
    return attn.proj(out.reshape(batch, qlen, dim))


@pytest.mark.parametrize("causal", [False, True])
def test_xl_relative_attention_matches_the_formula(causal: bool) -> None:
    torch.manual_seed(0)
    attn = RelativeAttention(DIM, heads=2, causal=causal).eval()
    x = torch.randn(2, 5, DIM)
    memory = torch.randn(2, 3, DIM)
    context = torch.cat([memory, x], dim=1)
    with torch.no_grad():
        expected = naive_relative_attention(attn, x, context)
        assert torch.allclose(attn(x, context), expected, atol=ATOL)


def test_xl_causal_hides_later_tokens_noncausal_does_not() -> None:
    x = tokens(1, 6)
    y = x.clone()
    y[:, -1] += 1.0  # change the last token of the only segment
    with torch.no_grad():
        causal = make_xl(segment_len=8, causal=True)
        assert torch.allclose(causal(x)[:, :-1], causal(y)[:, :-1], atol=ATOL)
        bidirectional = make_xl(segment_len=8, causal=False)
        assert max_diff(bidirectional(x)[:, 0], bidirectional(y)[:, 0]) > 1e-4


# --------------------------------------------------------------------------------------
# 3. Exact global attention.


def test_attention_is_permutation_equivariant_and_noncausal() -> None:
    model = make_attention()
    x = tokens(2, 13)
    perm = torch.randperm(13, generator=torch.Generator().manual_seed(3))
    y = x.clone()
    y[:, -1] += 1.0
    with torch.no_grad():
        out = model(x)
        assert torch.allclose(model(x[:, perm]), out[:, perm], atol=ATOL)
        assert max_diff(model(y)[:, 0], out[:, 0]) > 1e-4, "the first token must see the last"


def test_attention_query_chunking_is_exact() -> None:
    model = make_attention()
    x = tokens(2, 30)
    with torch.no_grad():
        model.query_chunk = 7
        chunked = model(x)
        model.query_chunk = 1000
        whole = model(x)
    assert torch.allclose(chunked, whole, atol=ATOL)


def naive_attention_forward(model: AttentionContext, x: torch.Tensor) -> torch.Tensor:
    """The encoder with its attention replaced by softmax(QK^T / sqrt(d)) V, same weights."""
    for block in model.blocks:
        attn = block.attn
        batch, length, dim = x.shape
        qkv = attn.qkv(block.attn_norm(x)).view(batch, length, 3, attn.heads, attn.head_dim)
        q, k, v = qkv.unbind(2)
        weights = (torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(attn.head_dim)).softmax(dim=-1)
        mixed = torch.einsum("bhij,bjhd->bihd", weights, v).reshape(batch, length, dim)
        x = x + attn.proj(mixed)
        x = x + block.mlp(block.mlp_norm(x))
    return model.norm(x)


def test_attention_matches_naive_softmax_attention() -> None:
    model = make_attention(query_chunk=4)
    x = tokens(2, 9)
    with torch.no_grad():
        assert torch.allclose(model(x), naive_attention_forward(model, x), atol=ATOL)


# --------------------------------------------------------------------------------------
# 4. Gradients reach the current segment, never the memory.


def test_xl_gradients_stop_at_memory() -> None:
    model = make_xl(segment_len=4, mem_len=8)
    x = tokens(2, 12).requires_grad_(True)
    model(x)[:, 8:].sum().backward()  # loss on the last segment only
    assert x.grad is not None
    assert torch.count_nonzero(x.grad[:, :8]) == 0, "gradient leaked through memory"
    assert x.grad[:, 8:].abs().sum() > 0
    attn = model.blocks[0].attn
    for param in (attn.r_w_bias, attn.r_r_bias, attn.r.weight, attn.q.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_xl_memory_tensors_are_detached() -> None:
    model = make_xl(segment_len=4, mem_len=4)
    seg1 = tokens(1, 4, seed=1).requires_grad_(True)
    seg2 = tokens(1, 4, seed=2).requires_grad_(True)
    _, mem1 = model.forward_segment(seg1, None)
    assert all(not m.requires_grad and m.grad_fn is None for m in mem1)
    out2, mem2 = model.forward_segment(seg2, mem1)
    assert all(not m.requires_grad for m in mem2)
    out2.sum().backward()
    assert seg1.grad is None and seg2.grad is not None


# --------------------------------------------------------------------------------------
# 5. Any length, any batch, built by name; reduced precision.


@pytest.mark.parametrize("name", ["attention", "transformer_xl", "none"])
@pytest.mark.parametrize("length", [1, 7, 13])
def test_any_length_and_batch_keeps_shape(name: str, length: int) -> None:
    extra = {"segment_len": 4, "heads": 2} if name == "transformer_xl" else {}
    model = create_context_encoder(name, dim=DIM, **extra).eval()
    assert isinstance(model, ContextEncoder) and model.dim == DIM
    x = tokens(3, length)
    with torch.no_grad():
        out = model(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_registry_builds_defaults() -> None:
    assert isinstance(create_context_encoder("attention", dim=DIM), AttentionContext)
    xl = create_context_encoder("transformer_xl", dim=DIM)
    assert isinstance(xl, TransformerXLContext) and xl.mem_len == xl.segment_len == 512
    assert create_context_encoder("transformer_xl", dim=DIM, mem_len=0).mem_len == 0


@pytest.mark.parametrize("name", ["attention", "transformer_xl"])
def test_bf16_autocast_runs_and_stays_close(name: str) -> None:
    model = make_attention(query_chunk=4) if name == "attention" else make_xl(causal=True)
    x = tokens(2, 10)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x)
        low = model.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert mixed.shape == low.shape == x.shape
    assert max_diff(mixed.float(), reference) < 0.1
    assert max_diff(low.float(), reference) < 0.2
