"""``hyper``: HyperAttention (Han et al. 2023), the official xT code's attention for long slides.

Exact attention costs ``L^2``; at 64k tokens that is 4e9 scores per head and layer.
HyperAttention approximates it in time and memory linear in ``L``:

1. **sortLSH.** Queries and keys are hashed with an angular LSH (the signs of ``r`` random
   projections) and sorted by bucket; buckets are ordered along a Gray code, so buckets next
   to each other in the order differ in one hyperplane. Similar queries and keys, which
   carry the large attention scores, land near each other in the sorted order.
2. **Block-diagonal attention** on the sorted sequences: query block ``i`` attends exactly to
   key block ``i`` (``block_size`` keys).
3. **Uniformly sampled columns.** ``sample_size`` keys drawn uniformly estimate the rest of
   each row: their ``exp(score) v`` terms, scaled by ``n / sample_size``, are an unbiased
   estimate of the sum over all keys outside the query's block (sampled keys that fall in
   the block are masked out, so nothing is counted twice).
4. The two parts are partial softmax sums; they are merged through their log-sum-exps
   (numerators added, denominators added), which is the normalisation of the paper.

Below ``exact_below`` keys (4096 by default, as in the official xT code) attention is exact.
Causal attention follows the paper's recursion: the causal half-problems recursively, the
second half's queries against the first half's keys non-causally (approximated), merged
through their log-sum-exps; it is exact up to ``2 * exact_below`` tokens. A query only ever
sees keys at or before it; which of them share its block depends on how all queries of its
half sort, so a later query can move an earlier row's approximation (not its keys).

Randomness: the LSH projections are drawn at construction (a buffer, saved with the
weights); the sampled columns are drawn from the global RNG in training (so checkpointed
recomputation replays them) and from a fixed seed in eval mode (reproducible inference).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from xt_core.models.context.attention import SelfAttention, build_attention_stack, chunked_attention, run_blocks
from xt_core.models.context.base import CONTEXT_ENCODERS, ContextEncoder
from xt_core.models.context.recompute import checkpointed, records_grad
from xt_core.models.context.rope import DEFAULT_ROPE_BASE

#: Queries processed at once by the approximate path (a multiple of the block size is used):
#: working memory ``query_chunk * (block_size + sample_size)`` scores per head.
DEFAULT_QUERY_CHUNK = 4096


# ----------------------------------------------------------------------------- hashing
def gray_rank(bits: torch.Tensor) -> torch.Tensor:
    """Position of each sign pattern ``(..., r)`` (bool) along the ``r``-bit Gray code.

    Consecutive ranks are patterns that differ in one bit (one hyperplane), so sorting by
    rank puts angularly close buckets next to each other: the inverse Gray code.
    """
    weights = 2 ** torch.arange(bits.shape[-1], device=bits.device)
    code = (bits.long() * weights).sum(-1)
    rank, shift = code, 1
    while shift < bits.shape[-1]:
        rank = rank ^ (rank >> shift)
        shift *= 2
    return rank


def lsh_order(x: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
    """The sortLSH permutation of ``x (B, H, L, d)``: indices ``(B, H, L)`` sorting it by bucket."""
    ranks = gray_rank(torch.matmul(x, projections.to(x.dtype)) > 0)
    return torch.argsort(ranks, dim=-1, stable=True)


# ----------------------------------------------------------------------------- pieces
def _merge(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor):
    """Combine two partial softmax attentions given as (normalised output, log-sum-exp).

    ``out = (exp(lse_a) out_a + exp(lse_b) out_b) / (exp(lse_a) + exp(lse_b))``, computed
    stably; a part with no keys (``lse = -inf``) contributes nothing.
    """
    lse = torch.logaddexp(lse_a, lse_b)
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    weight_a = torch.exp(lse_a - safe).unsqueeze(-1)
    weight_b = torch.exp(lse_b - safe).unsqueeze(-1)
    return out_a * weight_a + out_b * weight_b, lse


def _softmax_parts(scores: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(softmax(scores) @ v, logsumexp(scores))`` with one exp; ``scores`` is overwritten.
    Rows with every score ``-inf`` give ``(0, -inf)`` instead of NaN."""
    # The softmax and its log-sum-exp do not depend on the shift, so the shift needs no
    # gradient (and, detached, leaves ``scores`` free to be overwritten under autograd).
    peak = scores.detach().amax(dim=-1, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    weights = scores.sub_(peak).exp_()
    total = weights.sum(dim=-1, keepdim=True)
    out = torch.matmul(weights, v) / total.clamp_min(torch.finfo(total.dtype).tiny)
    return out, (peak + total.log()).squeeze(-1)


def exact_attention_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, query_chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact softmax attention with its log-sum-exp, queries in chunks (``query_chunk x Lk``
    scores at a time, recomputed in backward under autograd rather than kept). Causal:
    query ``i`` sees keys ``<= i`` (equal lengths)."""
    scale = q.shape[-1] ** -0.5

    def attend_chunk(start: int, part: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        scores = torch.matmul(part, k.transpose(-1, -2)) * scale
        if causal:
            rows = torch.arange(start, start + part.shape[-2], device=q.device)[:, None]
            scores = scores.masked_fill_(torch.arange(k.shape[-2], device=q.device)[None, :] > rows, float("-inf"))
        compute = torch.promote_types(scores.dtype, torch.float32)
        out, lse = _softmax_parts(scores.to(compute), v.to(compute))
        return out.to(v.dtype), lse

    recompute = records_grad(q, k, v)
    outputs, lses = [], []
    for start in range(0, q.shape[-2], query_chunk):
        parts = (start, q[..., start : start + query_chunk, :], k, v)
        out, lse = checkpointed(attend_chunk, *parts) if recompute else attend_chunk(*parts)
        outputs.append(out)
        lses.append(lse)
    return torch.cat(outputs, dim=-2), torch.cat(lses, dim=-1)


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, h, index[b, h, i], :]`` for ``x (B, H, L, d)``, ``index (B, H, M)``: whole rows
    copied through one ``index_select`` (several times faster than an elementwise gather)."""
    batch, heads, length, dim = x.shape
    offsets = torch.arange(batch * heads, device=x.device).view(batch, heads, 1) * length
    rows = x.reshape(batch * heads * length, dim).index_select(0, (index + offsets).reshape(-1))
    return rows.view(batch, heads, index.shape[-1], dim)


class HyperLayout:
    """What non-causal HyperAttention fixes before it attends: the sorted orders of queries and
    keys, padded to whole blocks, and the sampled key columns; then it attends one chunk of
    query blocks at a time (:meth:`attend`), each chunk's queries given as rows (so that a caller
    may compute them chunk by chunk: :mod:`attention_plan`).

    ``q_order (B, H, Lq)``, ``k_order (B, H, Lk)``: the sortLSH permutations; ``samples``: the
    sampled key indices (drawn by :meth:`draw_samples`, or given to repeat a draw).
    """

    def __init__(self, q_order: torch.Tensor, k_order: torch.Tensor, head_dim: int, block_size: int,
                 samples: torch.Tensor, query_chunk: int = DEFAULT_QUERY_CHUNK) -> None:
        batch, heads, q_len = q_order.shape
        k_len = k_order.shape[-1]
        device = q_order.device
        self.shape = (batch, heads, q_len, k_len, head_dim)
        self.block_size = block_size
        self.blocks = max(math.ceil(q_len / block_size), math.ceil(k_len / block_size))
        padded = self.blocks * block_size
        self.step = max(1, query_chunk // block_size)
        # Sorted orders, padded to whole blocks with a dummy row 0 (padded queries are dropped,
        # padded keys masked): rows are gathered one chunk of blocks at a time, never all sorted.
        self.q_order = q_order
        self.q_order_padded = F.pad(q_order, (0, padded - q_len))
        self.k_order_padded = F.pad(k_order, (0, padded - k_len))
        self.key_valid = torch.arange(padded, device=device) < k_len
        k_position = torch.empty_like(k_order).scatter_(-1, k_order, torch.arange(k_len, device=device).expand_as(k_order))
        # Uniform columns (with replacement): the unbiased estimate of the off-block mass.
        self.samples = samples
        self.sample_block = k_position[..., samples] // block_size  # (B, H, m) block of each sampled key
        self.log_scale = math.log(k_len / samples.shape[0])
        self.row_offset = torch.arange(batch * heads, device=device).view(batch, heads, 1) * q_len

    @staticmethod
    def draw_samples(k_len: int, sample_size: int, device: torch.device,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return torch.randint(k_len, (sample_size,), device=device, generator=generator)

    def chunks(self) -> list[tuple[int, int]]:
        """``(first block, block count)`` of each chunk of query blocks, in order."""
        return [(first, min(self.step, self.blocks - first)) for first in range(0, self.blocks, self.step)]

    def query_rows(self, first: int, count: int) -> torch.Tensor:
        """``(B, H, count * block_size)``: the query index of each sorted row of a chunk (padding: 0)."""
        return self.q_order_padded[..., first * self.block_size : (first + count) * self.block_size]

    def real_rows(self, first: int, count: int) -> torch.Tensor:
        """``(B, H, real)``: the query indices of a chunk's rows that are not padding, in order."""
        start = first * self.block_size
        real = min((first + count) * self.block_size, self.shape[2]) - start
        return self.q_order[..., start : start + real]

    def targets(self, first: int, count: int) -> torch.Tensor:
        """Flat ``(B * H * real,)`` indices into ``(B * H * Lq)`` of a chunk's real rows."""
        return (self.real_rows(first, count) + self.row_offset).reshape(-1)

    def key_rows(self, first: int, count: int) -> torch.Tensor:
        """``(B, H, count * block_size)``: the key index of each sorted row of a chunk (padding: 0)."""
        return self.k_order_padded[..., first * self.block_size : (first + count) * self.block_size]

    def attend(self, first: int, count: int, q_rows: torch.Tensor, k_rows: torch.Tensor, v_rows: torch.Tensor,
               k_sample: torch.Tensor, v_sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Block-diagonal part and sampled part of ``count`` query blocks from ``first``, merged:
        ``(out (B, H, count * block, d), lse (B, H, count * block))``, padding rows included.
        ``q_rows``, ``k_rows``, ``v_rows (B, H, count * block, d)``: the queries of :meth:`query_rows`,
        the keys and values of :meth:`key_rows`; ``k_sample``, ``v_sample``: the sampled columns'."""
        batch, heads, _, _, dim = self.shape
        block_size, device = self.block_size, q_rows.device
        scale = dim**-0.5
        compute = torch.promote_types(q_rows.dtype, torch.float32)
        rows = slice(first * block_size, (first + count) * block_size)
        chunk = (batch, heads, count, block_size, dim)
        kb, vb = k_rows.reshape(chunk), v_rows.reshape(chunk)
        scores = torch.matmul(q_rows.view(chunk), kb.transpose(-1, -2)).to(compute) * scale  # (B, H, c, b, b)
        valid = self.key_valid[rows].view(count, 1, block_size)
        block_out, block_lse = _softmax_parts(scores.masked_fill_(~valid, float("-inf")), vb.to(compute))

        sampled = torch.matmul(q_rows, k_sample.transpose(-1, -2)).to(compute) * scale  # (B, H, c*b, m)
        query_block = torch.arange(first, first + count, device=device).repeat_interleave(block_size)
        same_block = self.sample_block.unsqueeze(-2) == query_block[:, None]
        sample_out, sample_lse = _softmax_parts(sampled.masked_fill_(same_block, float("-inf")), v_sample.to(compute))
        return _merge(block_out.reshape(batch, heads, count * block_size, dim),
                      block_lse.reshape(batch, heads, -1), sample_out, sample_lse + self.log_scale)  # fmt: skip


def hyper_attention_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    projections: torch.Tensor,
    block_size: int,
    sample_size: int,
    generator: Optional[torch.Generator] = None,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-causal HyperAttention of ``q (B, H, Lq, d)`` over ``k, v (B, H, Lk, d)``, always
    approximate (the caller decides when to be exact). Returns ``(output, log-sum-exp)``.

    When one block covers all keys (``block_size >= Lk``) and the queries fit one block, it
    is exact: every key is in the block and every sampled key is masked out.
    """
    batch, heads, q_len, dim = q.shape
    samples = HyperLayout.draw_samples(k.shape[-2], sample_size, q.device, generator)
    layout = HyperLayout(lsh_order(q, projections), lsh_order(k, projections), dim, block_size, samples, query_chunk)
    k_sample, v_sample = k[..., samples, :], v[..., samples, :]
    compute = torch.promote_types(q.dtype, torch.float32)
    out = q.new_empty(batch * heads * q_len, dim, dtype=compute)
    lse_out = q.new_empty(batch * heads * q_len, dtype=compute)

    def attend_chunk(first: int, count: int, q, k, v, k_sample, v_sample) -> tuple[torch.Tensor, torch.Tensor]:
        keys = layout.key_rows(first, count)
        return layout.attend(first, count, gather_rows(q, layout.query_rows(first, count)),
                             gather_rows(k, keys), gather_rows(v, keys), k_sample, v_sample)

    # Under autograd each chunk is recomputed in backward rather than kept: its scores are
    # (block + sample) per query, far more than the queries, keys and values themselves.
    recompute = records_grad(q, k, v)
    for first, count in layout.chunks():
        parts = (first, count, q, k, v, k_sample, v_sample)
        merged, lse = checkpointed(attend_chunk, *parts) if recompute else attend_chunk(*parts)
        target = layout.targets(first, count)
        real = target.shape[0] // (batch * heads)  # queries of this chunk that are not padding
        out.index_copy_(0, target, merged[..., :real, :].reshape(-1, dim))
        lse_out.index_copy_(0, target, lse[..., :real].reshape(-1))
    return out.view(batch, heads, q_len, dim).to(v.dtype), lse_out.view(batch, heads, q_len)


# ----------------------------------------------------------------------------- the module
class HyperSelfAttention(SelfAttention):
    """Multi-head self-attention whose core is HyperAttention above ``exact_below`` keys."""

    def __init__(
        self,
        dim: int,
        heads: int,
        block_size: int = 256,
        sample_size: int = 256,
        lsh_projections: int = 7,
        exact_below: int = 4096,
        causal: bool = False,
        query_chunk: int = DEFAULT_QUERY_CHUNK,
        seed: int = 0,
    ) -> None:
        super().__init__(dim, heads, dropout=0.0, query_chunk=query_chunk)
        if block_size < 1 or sample_size < 1 or lsh_projections < 1:
            raise ValueError("block_size, sample_size and lsh_projections must be positive")
        self.block_size, self.sample_size = block_size, sample_size
        self.exact_below, self.causal, self.seed = exact_below, causal, seed
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("lsh_projections", torch.randn(self.head_dim, lsh_projections, generator=generator))

    def _generator(self, device: torch.device) -> Optional[torch.Generator]:
        """Eval: a fixed seed, so inference is reproducible. Training: the global RNG."""
        if self.training:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)

    def noncausal(self, q, k, v, generator) -> tuple[torch.Tensor, torch.Tensor]:
        if k.shape[-2] <= self.exact_below:
            return exact_attention_lse(q, k, v)
        return hyper_attention_lse(q, k, v, self.lsh_projections, self.block_size, self.sample_size, generator,
                                   self.query_chunk or DEFAULT_QUERY_CHUNK)  # fmt: skip

    def causal_attention(self, q, k, v, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The paper's causal recursion: halves recursively, the off-diagonal quarter approximated."""
        length = q.shape[-2]
        if length <= max(self.exact_below, self.block_size):  # one block is exact anyway
            return exact_attention_lse(q, k, v, causal=True)
        mid = length // 2
        head_out, head_lse = self.causal_attention(q[..., :mid, :], k[..., :mid, :], v[..., :mid, :], generator)
        cross_out, cross_lse = self.noncausal(q[..., mid:, :], k[..., :mid, :], v[..., :mid, :], generator)
        tail_out, tail_lse = self.causal_attention(q[..., mid:, :], k[..., mid:, :], v[..., mid:, :], generator)
        tail_out, tail_lse = _merge(cross_out, cross_lse, tail_out, tail_lse)
        return torch.cat([head_out, tail_out], dim=-2), torch.cat([head_lse, tail_lse], dim=-1)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        generator = self._generator(q.device)
        if self.causal:
            return self.causal_attention(q, k, v, generator)[0]
        if k.shape[-2] <= self.exact_below:  # exact and fast (fused kernels, chunked on CPU)
            return chunked_attention(q, k, v, self.query_chunk)
        return self.noncausal(q, k, v, generator)[0]


@CONTEXT_ENCODERS.register("hyper")
class HyperAttentionContext(ContextEncoder):
    """Global attention over all region tokens through HyperAttention (exact below a length).

    The same LLaMA-style blocks as ``attention`` (their weights load into each other); only
    the attention core differs. Args as ``attention``, and:

    Args:
        block_size: keys per block of the sorted block-diagonal part (xT: 256).
        sample_size: uniformly sampled key columns per layer.
        lsh_projections: hyperplanes of the angular LSH (``2 ** r`` buckets).
        exact_below: attention is exact up to this many keys (xT: 4096).
        causal: token ``i`` attends to tokens ``<= i`` (raster order) only.
        seed: seeds the LSH projections and the eval-mode column samples.
        recompute: under autograd, as ``attention`` (non-causal: one autograd node keeping the
            tokens, :mod:`attention_plan`; causal: each layer checkpointed).
        positions, rope_base: as ``attention``; with ``rope2d`` the queries and keys are
            rotated before they are hashed, so buckets group rotated vectors.
    """

    def __init__(
        self,
        dim: int,
        depth: int = 2,
        heads: int | None = None,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        block_size: int = 256,
        sample_size: int = 256,
        lsh_projections: int = 7,
        exact_below: int = 4096,
        causal: bool = False,
        query_chunk: int = DEFAULT_QUERY_CHUNK,
        seed: int = 0,
        recompute: bool = True,
        positions: str = "absolute",
        rope_base: float = DEFAULT_ROPE_BASE,
    ) -> None:
        super().__init__()
        build_attention_stack(
            self, dim, depth, heads, mlp_ratio, dropout, recompute, positions, rope_base,
            lambda index: HyperSelfAttention(dim, self.heads, block_size, sample_size, lsh_projections, exact_below,
                                             causal, query_chunk, seed + index))

    def forward(self, tokens: torch.Tensor, coords: Optional[torch.Tensor] = None) -> torch.Tensor:
        return run_blocks(self, tokens, coords)
