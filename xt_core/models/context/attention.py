"""``attention``: exact global non-causal self-attention over all region tokens.

Every token sees every other token of the slide, so this is the reference the bounded
encoders (``transformer_xl``, ``mamba``, ``hyper``) are judged against. Its time is
quadratic in the token count (one layer: ~1 s at 8k tokens, ~54 s at 64k on one CPU core);
``hyper`` is the global attention for long slides. The attention itself goes
through ``torch.nn.functional.scaled_dot_product_attention``, which on CUDA picks a
flash / memory-efficient kernel whose memory is linear in the sequence length. Off CUDA
the math path would build the full ``L x L`` score matrix, so queries are processed in
chunks against the full keys and values: exact, same result, working memory
``query_chunk x L`` per head.

With ``positions: rope2d`` every layer rotates its queries and keys by the tokens' 2D grid
places (:mod:`rope`), so scores depend on 2D offsets on the slide; otherwise the encoder is
permutation-equivariant and sees positions only through what the model added to the tokens.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from xt_core.models.context.base import CONTEXT_ENCODERS, ContextEncoder
from xt_core.models.context.layers import RMSNorm, SwiGLU, check_heads
from xt_core.models.context.recompute import checkpointed, recomputed_pass, recomputing
from xt_core.models.context.rope import (
    DEFAULT_ROPE_BASE,
    RotaryTables,
    apply_rotary,
    check_positions,
    encoder_rope,
    rotary_tables,
)


def chunked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    query_chunk: int | None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Non-causal SDPA of ``q (B, H, Lq, d)`` over ``k, v (B, H, Lk, d)``.

    Query rows are independent in softmax attention, so splitting them into chunks is
    exact. Chunking is skipped on CUDA (the fused kernels already bound memory) and when
    ``query_chunk`` is ``None`` or covers all queries.
    """
    length = q.shape[-2]
    if q.is_cuda or query_chunk is None or length <= query_chunk:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    parts = [
        F.scaled_dot_product_attention(q_part, k, v, dropout_p=dropout_p)
        for q_part in q.split(query_chunk, dim=-2)
    ]
    return torch.cat(parts, dim=-2)


class SelfAttention(nn.Module):
    """Multi-head non-causal self-attention (no bias terms, LLaMA-style)."""

    def __init__(
        self, dim: int, heads: int, dropout: float = 0.0, query_chunk: int | None = 4096
    ) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.dropout = dropout
        self.query_chunk = query_chunk
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, L, D) -> q, k, v`` each ``(B, H, L, head_dim)``."""
        batch, length, _ = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The attention core on ``(B, H, L, head_dim)`` tensors: exact softmax attention here;
        subclasses (``hyper``) replace only this."""
        dropout_p = self.dropout if self.training else 0.0
        return chunked_attention(q, k, v, self.query_chunk, dropout_p)

    def forward(self, x: torch.Tensor, rope: Optional[RotaryTables] = None) -> torch.Tensor:
        """``x (B, L, D)``; ``rope``: the tokens' 2D rotary tables, applied to q and k before
        the attention core (so HyperAttention hashes the rotated vectors)."""
        q, k, v = self.split_heads(x)
        if rope is not None:
            q, k = apply_rotary(q, rope), apply_rotary(k, rope)
        out = self.attend(q, k, v)
        batch, _, length, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(batch, length, -1))


class AttentionBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``, around any attention
    module that maps ``(B, L, D)`` to ``(B, L, D)`` (:class:`SelfAttention` or a subclass)."""

    def __init__(self, dim: int, mlp_ratio: float, dropout: float, attention: nn.Module) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(dim)
        self.attn = attention
        self.mlp_norm = RMSNorm(dim)
        self.mlp = SwiGLU(dim, mlp_ratio, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, rope: Optional[RotaryTables] = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), rope))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


@CONTEXT_ENCODERS.register("attention")
class AttentionContext(ContextEncoder):
    """Exact global attention over the whole token sequence.

    Args:
        dim: token width.
        depth: number of blocks.
        heads: attention heads; default gives heads of about 64 channels.
        mlp_ratio: gated-MLP width relative to ``dim`` (before LLaMA's 2/3 factor).
        dropout: dropout on attention weights and residual branches.
        query_chunk: queries per SDPA call off CUDA (``None`` = no chunking).
        recompute: under autograd, keep only the tokens and run the layers again in backward,
            chunk of queries by chunk (:mod:`attention_plan`; with dropout, each layer is
            checkpointed instead): same gradient, one chunk's activations alive.
        positions: ``absolute`` (default), ``normed`` or ``rope2d`` (:mod:`rope`).
        rope_base: frequency base of the 2D RoPE.
    """

    def __init__(
        self,
        dim: int,
        depth: int = 2,
        heads: int | None = None,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        query_chunk: int | None = 4096,
        recompute: bool = True,
        positions: str = "absolute",
        rope_base: float = DEFAULT_ROPE_BASE,
    ) -> None:
        super().__init__()
        if query_chunk is not None and query_chunk < 1:
            raise ValueError(f"query_chunk must be positive or None, got {query_chunk}")
        build_attention_stack(self, dim, depth, heads, mlp_ratio, dropout, recompute, positions, rope_base,
                              lambda index: SelfAttention(dim, self.heads, dropout, query_chunk))

    @property
    def query_chunk(self) -> int | None:
        return self.blocks[0].attn.query_chunk if len(self.blocks) else None

    @query_chunk.setter
    def query_chunk(self, value: int | None) -> None:
        """Change the chunk size after construction (it changes memory use, not results)."""
        for block in self.blocks:
            block.attn.query_chunk = value

    def forward(self, tokens: torch.Tensor, coords: Optional[torch.Tensor] = None) -> torch.Tensor:
        return run_blocks(self, tokens, coords)


def build_attention_stack(
    encoder: nn.Module, dim: int, depth: int, heads: int | None, mlp_ratio: float, dropout: float,
    recompute: bool, positions: str, rope_base: float, make_attention: Callable[[int], nn.Module],
) -> None:
    """Give ``encoder`` what every global-attention encoder has (``dim``, ``heads``, ``recompute``,
    ``positions``, ``rope_base``, ``depth`` LLaMA-style ``blocks`` and the final ``norm``), with
    ``make_attention(layer_index)`` as each block's attention core (exact or HyperAttention)."""
    encoder.dim = dim
    encoder.recompute = recompute
    encoder.heads = check_heads(dim, heads)
    encoder.positions, encoder.rope_base = check_positions(positions), float(rope_base)
    if encoder.positions == "rope2d":
        rotary_tables(torch.zeros(0, 2), dim // encoder.heads)  # fail now on a head width RoPE cannot split
    encoder.blocks = nn.ModuleList(
        AttentionBlock(dim, mlp_ratio, dropout, make_attention(index)) for index in range(depth)
    )
    encoder.norm = RMSNorm(dim)


def run_blocks(encoder: nn.Module, tokens: torch.Tensor, coords: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``encoder.norm`` after ``encoder.blocks`` in order. When recomputing: as one autograd node
    keeping only the tokens (:mod:`attention_plan`) where it applies, else each block checkpointed."""
    from xt_core.models.context import attention_plan  # it builds on hyper, which builds on this module

    recompute = recomputing(encoder, tokens)
    rope = encoder_rope(encoder, coords, tokens.shape[1], tokens.device, tokens.dtype)
    if recompute and attention_plan.applies(encoder, tokens.shape[1]):
        return recomputed_pass(attention_plan.AttentionLayers(encoder, rope), tokens)
    x = tokens
    for block in encoder.blocks:
        x = checkpointed(block, x, rope) if recompute else block(x, rope)
    return encoder.norm(x)
