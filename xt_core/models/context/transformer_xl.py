"""``transformer_xl``: segment-level recurrence with relative positions (Dai et al. 2019).

The token sequence is cut into consecutive segments. Each layer keeps, as memory, its
own INPUT hidden states of the last ``mem_len`` tokens before the current segment; keys
and values of the current segment are computed over ``[memory, segment]``. Memory is
detached (no gradient flows back into earlier segments, which is what bounds training
memory) and really carried from one segment to the next: ``forward_segment`` returns the
NEW memory. (The official xT code computes the new memory and returns the old one, so
its memory never carries.)

Attention scores follow the Transformer-XL decomposition, for a query at absolute
position ``i`` and a key at ``j``::

    score(i, j) = (q_i + u) . k_j  +  (q_i + v) . W_r R(i - j)

with ``R`` sinusoidal embeddings of the signed distance, ``W_r`` a learned projection and
``u``, ``v`` (``r_w_bias``, ``r_r_bias``) learned global biases. By default attention is
non-causal within a segment, so distances are negative too (a query sees later keys of
its own segment) and embeddings are built for every distance from ``klen - 1`` down to
``-(qlen - 1)``.

Those distances are 1D, along the raster order: a token's neighbour below is a whole grid
row away. With ``positions: rope2d`` the relative term is 2D instead: queries and keys are
rotated by their tokens' global (row, col) (:mod:`rope`; memory keys with the memory tokens'
own places), so ``score(i, j) = (q_i + u) . R(dy, dx) k_j`` depends on the 2D offset, and
the 1D term (``r``, ``r_r_bias``) is not built.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from xt_core.models.context.base import CONTEXT_ENCODERS, ContextEncoder
from xt_core.models.context.layers import RMSNorm, SwiGLU, check_heads
from xt_core.models.context.recompute import (
    GradientSum,
    Replay,
    SequencePlan,
    piece_gradients,
    recomputed_pass,
    recomputing,
    trainable_parameters,
)
from xt_core.models.context.rope import (
    DEFAULT_ROPE_BASE,
    RotaryTables,
    apply_rotary,
    check_positions,
    encoder_rope,
    rotary_tables,
)

Memory = list[torch.Tensor]


def relative_distances(qlen: int, klen: int, device: torch.device | None = None) -> torch.Tensor:
    """Signed distances ``klen - 1, ..., -(qlen - 1)`` (descending, ``qlen + klen - 1`` values).

    The current segment's queries are the last ``qlen`` of the ``klen`` keys; query ``i``
    and key ``j`` are ``(klen - qlen + i) - j`` apart, which spans exactly this range.
    """
    return torch.arange(klen - 1, -qlen, -1, device=device, dtype=torch.float32)


def sinusoid_embedding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """``[sin(p * f), cos(p * f)]`` over geometric frequencies, float32, shape ``(P, dim)``."""
    half = (dim + 1) // 2
    exponents = torch.arange(half, device=positions.device, dtype=torch.float32) * 2 / dim
    inv_freq = 1.0 / (10000.0**exponents)
    angles = positions.float()[:, None] * inv_freq[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)[:, :dim]


def relative_shift(scores: torch.Tensor, klen: int) -> torch.Tensor:
    """Turn per-distance scores into per-key scores, exactly, without a gather.

    ``scores[..., i, p]`` is the score of query ``i`` with the ``p``-th distance of
    :func:`relative_distances` (``P = qlen + klen - 1`` of them). The score for key ``j``
    sits at ``p = qlen - 1 - i + j``. Padding one zero column, re-reading the buffer as
    ``(P + 1, qlen)``, dropping the first row and re-reading as ``(qlen, P)`` shifts row
    ``i`` left by ``qlen - 1 - i``; because ``P`` covers every distance in both
    directions, no entry of the first ``klen`` columns wraps into a neighbouring row, so
    the result is exact for causal and non-causal attention alike.
    """
    *lead, qlen, num_dist = scores.shape
    padded = F.pad(scores, (1, 0))
    shifted = padded.reshape(*lead, num_dist + 1, qlen)[..., 1:, :].reshape(*lead, qlen, num_dist)
    return shifted[..., :klen]


def causal_mask(qlen: int, klen: int, device: torch.device | None = None) -> torch.Tensor:
    """``True`` where key ``j`` lies after query ``i`` (the memory is always visible)."""
    mlen = klen - qlen
    return torch.ones(qlen, klen, dtype=torch.bool, device=device).triu(mlen + 1)


class RelativeAttention(nn.Module):
    """Multi-head attention of a segment over ``[memory, segment]`` with XL relative positions."""

    def __init__(
        self, dim: int, heads: int, dropout: float = 0.0, causal: bool = False, rotary: bool = False
    ) -> None:
        super().__init__()
        self.dim = dim
        self.heads = heads
        self.head_dim = dim // heads
        self.dropout = dropout
        self.causal = causal
        self.rotary = rotary
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        if not rotary:
            self.r = nn.Linear(dim, dim, bias=False)  # W_{k,R}: projects relative embeddings
        self.proj = nn.Linear(dim, dim, bias=False)
        # u (content) and v (position): global biases shared by every query position.
        self.r_w_bias = nn.Parameter(torch.randn(heads, self.head_dim) * 0.02)
        if not rotary:
            self.r_r_bias = nn.Parameter(torch.randn(heads, self.head_dim) * 0.02)

    def position_scores(self, q: torch.Tensor, klen: int) -> torch.Tensor:
        """``(q_i + v) . W_r R(i - j)`` for every query and key, ``(B, H, qlen, klen)``."""
        qlen = q.shape[-2]
        distances = relative_distances(qlen, klen, q.device)
        rel = sinusoid_embedding(distances, self.dim).to(q.dtype)
        r = self.r(rel).view(-1, self.heads, self.head_dim).transpose(0, 1)  # (H, P, d)
        q_r = q + self.r_r_bias.to(q.dtype)[None, :, None, :]
        per_distance = torch.matmul(q_r, r.transpose(-1, -2).to(q_r.dtype))  # (B, H, qlen, P)
        return relative_shift(per_distance, klen)

    def forward(self, x: torch.Tensor, context: torch.Tensor, rope: Optional[RotaryTables] = None) -> torch.Tensor:
        """``x (B, qlen, D)``: normed segment; ``context (B, klen, D)``: normed ``[memory, x]``;
        ``rope``: rotary tables of the ``klen`` keys (the queries are the last ``qlen``),
        required when the layer is ``rotary``."""
        batch, qlen, _ = x.shape
        klen = context.shape[1]
        q = self.q(x).view(batch, qlen, self.heads, self.head_dim).transpose(1, 2)
        kv = self.kv(context).view(batch, klen, 2, self.heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        dtype = v.dtype
        q = q.to(dtype)
        if self.rotary:
            return self._rotary_attention(q, k, v, rope, batch, qlen, klen)
        # SDPA multiplies q.k by 1/sqrt(d) and then adds attn_mask, so the position term is
        # scaled here to keep both terms on the same footing as in the paper.
        bias = self.position_scores(q, klen) * self.head_dim**-0.5
        if self.causal:
            bias = bias.masked_fill(causal_mask(qlen, klen, q.device), float("-inf"))
        q_w = q + self.r_w_bias.to(dtype)[None, :, None, :]
        dropout_p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(
            q_w, k, v, attn_mask=bias.to(dtype), dropout_p=dropout_p
        )
        return self.proj(out.transpose(1, 2).reshape(batch, qlen, self.dim))

    def _rotary_attention(self, q, k, v, rope: Optional[RotaryTables], batch: int, qlen: int, klen: int):
        """``(q_i + u) . R(dy, dx) k_j``: the content bias is added before the rotation, so
        it too sees only the 2D offset (added after, it would see absolute places)."""
        if rope is None or rope.cos.shape[0] != klen:
            raise ValueError(f"a rotary layer needs the rotary tables of its {klen} keys")
        q_w = apply_rotary(q + self.r_w_bias.to(q.dtype)[None, :, None, :], rope.window(klen - qlen, klen))
        k = apply_rotary(k, rope)
        mask = ~causal_mask(qlen, klen, q.device) if self.causal else None
        dropout_p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q_w, k, v, attn_mask=mask, dropout_p=dropout_p)
        return self.proj(out.transpose(1, 2).reshape(batch, qlen, self.dim))


class XLBlock(nn.Module):
    """Pre-norm block whose attention also reads this layer's memory."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, dropout: float, causal: bool, rotary: bool = False
    ) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(dim)
        self.attn = RelativeAttention(dim, heads, dropout, causal, rotary)
        self.mlp_norm = RMSNorm(dim)
        self.mlp = SwiGLU(dim, mlp_ratio, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, rope: Optional[RotaryTables] = None) -> torch.Tensor:
        qlen = x.shape[1]
        context = torch.cat([memory.to(x.dtype), x], dim=1) if memory.shape[1] else x
        normed = self.attn_norm(context)
        x = x + self.drop(self.attn(normed[:, -qlen:], normed, rope))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


@CONTEXT_ENCODERS.register("transformer_xl")
class TransformerXLContext(ContextEncoder):
    """Transformer-XL over the token sequence, segment by segment, memory carried.

    Args:
        dim: token width (even, for the sinusoidal relative embeddings).
        depth: number of blocks.
        heads: attention heads; default gives heads of about 64 channels.
        mlp_ratio: gated-MLP width relative to ``dim`` (before LLaMA's 2/3 factor).
        segment_len: tokens per segment in :meth:`forward` (e.g. a multiple of the tokens
            per region, so that segments hold whole regions).
        mem_len: previous tokens each layer keeps as memory; ``None`` = ``segment_len``,
            ``0`` = no memory (segments independent).
        causal: if False (default) a token sees its whole segment and all memory; if True
            only earlier positions (the usual XL mask).
        dropout: dropout on attention weights and residual branches.
        recompute: under autograd, run the whole sequence as one node that keeps only the
            tokens and runs the segments again in backward (:mod:`recompute`): same gradient,
            one segment's activations alive instead of the whole sequence's.
        positions: ``absolute`` (default: 1D relative term along the raster order),
            ``normed`` (the same here; the model normalises the tokens) or ``rope2d`` (2D
            relative term, :mod:`rope`).
        rope_base: frequency base of the 2D RoPE.
    """

    def __init__(
        self,
        dim: int,
        depth: int = 2,
        heads: int | None = None,
        mlp_ratio: float = 4.0,
        segment_len: int = 512,
        mem_len: int | None = None,
        causal: bool = False,
        dropout: float = 0.0,
        recompute: bool = True,
        positions: str = "absolute",
        rope_base: float = DEFAULT_ROPE_BASE,
    ) -> None:
        super().__init__()
        if segment_len < 1:
            raise ValueError(f"segment_len must be positive, got {segment_len}")
        mem_len = segment_len if mem_len is None else mem_len
        if mem_len < 0:
            raise ValueError(f"mem_len must be >= 0, got {mem_len}")
        if dim % 2:
            raise ValueError(f"dim must be even for sinusoidal relative positions, got {dim}")
        self.dim = dim
        self.depth = depth
        self.heads = check_heads(dim, heads)
        self.segment_len = segment_len
        self.mem_len = mem_len
        self.causal = causal
        self.recompute = recompute
        self.positions, self.rope_base = check_positions(positions), float(rope_base)
        rotary = self.positions == "rope2d"
        if rotary:
            rotary_tables(torch.zeros(0, 2), dim // self.heads)  # fail now on a head width RoPE cannot split
        self.blocks = nn.ModuleList(
            XLBlock(dim, self.heads, mlp_ratio, dropout, causal, rotary) for _ in range(depth)
        )
        self.norm = RMSNorm(dim)

    def init_memory(
        self,
        batch: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Memory:
        """Empty memory, one ``(batch, 0, dim)`` tensor per layer."""
        dtype = dtype or torch.get_default_dtype()
        return [torch.zeros(batch, 0, self.dim, device=device, dtype=dtype) for _ in self.blocks]

    def update_memory(self, memory: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Last ``mem_len`` tokens of ``[memory, hidden]``, detached from autograd.

        Where the memory is the whole of this segment's layer input (``mem_len`` equal to the
        segment's length, the default) it is that tensor itself, not a copy (for the first layer
        a view of the token sequence, which exists anyway). Otherwise a copy, so that a memory
        kept for the next segment (or by a caller streaming segment by segment) does not keep the
        whole joined tensor, or the layer's input, alive.
        """
        if self.mem_len == 0:
            return hidden[:, :0].detach()
        if hidden.shape[1] == self.mem_len:
            return hidden.detach()
        joined = torch.cat([memory.to(hidden.dtype), hidden], dim=1) if memory.shape[1] else hidden
        return joined[:, -self.mem_len :].detach().clone()

    def rope(self, coords: Optional[torch.Tensor], length: int, device, dtype) -> Optional[RotaryTables]:
        """Rotary tables of ``length`` tokens at ``coords`` (None unless ``positions`` is ``rope2d``)."""
        return encoder_rope(self, coords, length, device, dtype)

    def forward_segment(
        self, segment: torch.Tensor, memory: Memory | None = None, coords: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, Memory]:
        """Run one segment ``(B, S, dim)`` against ``memory``; return ``(output, new_memory)``.

        The new memory holds each layer's input for the last ``mem_len`` tokens seen so
        far (old memory then this segment), so passing it to the next call continues the
        sequence. Segments of any length are accepted (e.g. one region at a time).
        ``coords``: the grid places ``(M + S, 2)`` of the memory's ``M`` tokens then the
        segment's (used with ``rope2d``; None: consecutive columns of one row).
        """
        if memory is None:
            memory = self.init_memory(segment.shape[0], segment.device, segment.dtype)
        klen = (memory[0].shape[1] if memory else 0) + segment.shape[1]
        return self._segment(segment, memory, self.rope(coords, klen, segment.device, segment.dtype))

    def _segment(
        self, segment: torch.Tensor, memory: Memory, rope: Optional[RotaryTables]
    ) -> tuple[torch.Tensor, Memory]:
        if len(memory) != len(self.blocks):
            raise ValueError(f"memory has {len(memory)} layers, the model {len(self.blocks)}")
        hidden = segment
        new_memory: Memory = []
        for block, layer_memory in zip(self.blocks, memory):
            if layer_memory.shape[0] != segment.shape[0] and layer_memory.shape[1]:
                raise ValueError(
                    f"memory batch {layer_memory.shape[0]} != segment batch {segment.shape[0]}"
                )
            new_memory.append(self.update_memory(layer_memory, hidden))
            hidden = block(hidden, layer_memory, rope)
        return self.norm(hidden), new_memory

    def forward(self, tokens: torch.Tensor, coords: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Whole sequence: segments of ``segment_len`` in order, memory carried, outputs joined."""
        if tokens.shape[1] == 0:
            return tokens
        rope = self.rope(coords, tokens.shape[1], tokens.device, tokens.dtype)
        if recomputing(self, tokens):
            return recomputed_pass(_RecomputedSegments(self, rope), tokens)
        if torch.is_grad_enabled():  # a plain autograd graph over every segment
            outputs = [out for *_, out in self._segments(tokens, rope)]
            return torch.cat(outputs, dim=1)
        # Without autograd each segment's output goes straight into the result, so no small
        # long-lived tensors sit between one segment's transient blocks and the next's
        # (on glibc that fragmentation grew the heap with every segment).
        return self._into_result(tokens, rope)

    def _segments(
        self, tokens: torch.Tensor, rope: Optional[RotaryTables]
    ) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
        """``(start, stop, segment, output)`` of each segment in order, the memory carried between them."""
        memory = self.init_memory(tokens.shape[0], tokens.device, tokens.dtype)
        start = 0
        # One split, not a slice per segment: under autograd, backward then joins the segments'
        # gradients once, where each slice's backward would write a zero-filled copy of the sequence.
        for segment in tokens.split(self.segment_len, dim=1):
            stop = start + segment.shape[1]
            held = memory[0].shape[1] if memory else 0  # the memory's tokens are the ones just before
            keys = None if rope is None else rope.window(start - held, stop)
            out, memory = self._segment(segment, memory, keys)
            yield start, stop, segment, out
            start = stop

    def _into_result(self, tokens: torch.Tensor, rope: Optional[RotaryTables]) -> torch.Tensor:
        result = torch.empty_like(tokens)
        for start, stop, _, out in self._segments(tokens, rope):
            result[:, start:stop] = out
        return result


class _RecomputedSegments(SequencePlan):
    """Transformer-XL as one autograd node: forward keeps nothing but the tokens; backward runs
    the segments again with autograd, in forward order (its memory is detached, so no gradient
    crosses a segment boundary and the memory is rebuilt on the way, RNG replayed from the
    start), and writes each segment's token gradient into one tensor."""

    def __init__(self, encoder: TransformerXLContext, rope: Optional[RotaryTables]) -> None:
        self.encoder, self.rope = encoder, rope
        self.params = trainable_parameters(encoder)

    def run(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encoder._into_result(tokens, self.rope)

    def backward(
        self, tokens: torch.Tensor, grad_out: torch.Tensor, replay: Replay, grads: GradientSum
    ) -> Optional[torch.Tensor]:
        wants_tokens = tokens.requires_grad
        grad_tokens = torch.empty_like(tokens) if wants_tokens else None
        segments = tokens.detach().requires_grad_(wants_tokens)
        with replay.replaying():
            for start, stop, segment, out in self.encoder._segments(segments, self.rope):
                # The gradient of this segment's split piece, not of the whole sequence (which
                # would be a zero-filled sequence-sized tensor per segment).
                found = piece_gradients([out], [grad_out[:, start:stop]], [segment, *self.params])
                if grad_tokens is not None:
                    grad_tokens[:, start:stop] = 0 if found[0] is None else found[0]
                grads.add(found[1:])
        return grad_tokens
