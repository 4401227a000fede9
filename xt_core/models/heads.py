"""Heads: a slide label from all context tokens, and a class per token for the heatmap.

The classification heads pool over chunks of ``POOL_CHUNK`` tokens and merge the chunks'
states (an online softmax, as flash attention keeps it), in training and inference alike
(under autograd the chunks are recomputed in backward, as are the segmentation head's):
their working memory is one chunk's normalised tokens and gate activations, whatever the
token count, next to the context tokens themselves (which the segmentation head needs in
full anyway). Measured at 100,000 tokens of width 96 (37 MiB of tokens): under 20 MiB of
working memory, against 110 MiB pooling them at once (``python bench/run_context_bench.py --only
inference``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from xt_core.models.context.recompute import chunked_pass, records_grad
from xt_core.models.registry import Registry

HEADS: Registry[nn.Module] = Registry("head")

#: Tokens pooled at once by the classification heads (the rest is merged chunk by chunk).
POOL_CHUNK = 8192


@dataclass
class PoolState:
    """Running state of an online softmax-weighted mean over token chunks."""

    max_score: torch.Tensor  # (B, 1)
    weight_sum: torch.Tensor  # (B, 1)
    weighted: torch.Tensor  # (B, D)

    def merge(self, other: "PoolState") -> "PoolState":
        m = torch.maximum(self.max_score, other.max_score)
        a, b = torch.exp(self.max_score - m), torch.exp(other.max_score - m)
        return PoolState(m, self.weight_sum * a + other.weight_sum * b, self.weighted * a + other.weighted * b)

    def pooled(self) -> torch.Tensor:
        return self.weighted / self.weight_sum


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Pooling sums in float32 at least (half precision from autocast is too coarse), float64 kept."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _in_pieces(fn, tokens: torch.Tensor, module: nn.Module, chunk: int):
    """``fn`` (returning a tuple of tensors) on each chunk of ``chunk`` tokens; under autograd the
    chunks run as one node that recomputes them in backward (:func:`chunked_pass`), so training
    keeps one chunk's activations, not the slide's, and one gradient tensor for the tokens."""
    if tokens.shape[1] > chunk and records_grad(tokens, module=module):
        return chunked_pass(fn, tokens, chunk, module)
    pieces = tokens.split(chunk, dim=1) if tokens.shape[1] else (tokens,)
    return [fn(piece) for piece in pieces]


def pool_in_chunks(head: nn.Module, tokens: torch.Tensor, chunk: int | None = None) -> PoolState:
    """``head.partial`` over chunks of ``chunk`` tokens (default :data:`POOL_CHUNK`), merged:
    the same pooled state as one call on all tokens, in one chunk's working memory."""
    def partial(piece: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        state = head.partial(piece)
        return state.max_score, state.weight_sum, state.weighted

    parts = _in_pieces(partial, tokens, head, chunk or POOL_CHUNK)
    state = PoolState(*parts[0])
    for part in parts[1:]:
        state = state.merge(PoolState(*part))
    return state


@HEADS.register("attention")
class AttentionPoolClassifier(nn.Module):
    """Gated attention pooling (Ilse et al., 2018) over tokens, then a linear classifier.

    Which tokens matter is learned: tumour regions can decide a slide label however few.
    """

    def __init__(self, dim: int, num_classes: int, hidden: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = hidden or max(dim // 2, 16)
        self.norm = nn.LayerNorm(dim)
        self.attn_v = nn.Linear(dim, hidden)
        self.attn_u = nn.Linear(dim, hidden)
        self.attn_w = nn.Linear(hidden, 1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)

    def scores(self, tokens: torch.Tensor) -> torch.Tensor:
        """Attention logits ``(B, L)`` of normalised tokens ``(B, L, D)``."""
        gate = torch.tanh(self.attn_v(tokens)) * torch.sigmoid(self.attn_u(tokens))
        return self.attn_w(gate).squeeze(-1)

    def partial(self, tokens: torch.Tensor) -> PoolState:
        """Pooling state of one chunk of tokens ``(B, l, D)``; merge chunks with ``PoolState.merge``."""
        h = self.norm(tokens)
        s = _wide(self.scores(h))
        m = s.max(dim=1, keepdim=True).values
        w = torch.exp(s - m)
        return PoolState(m, w.sum(dim=1, keepdim=True), torch.einsum("bl,bld->bd", w, _wide(h)))

    def classify(self, state: PoolState) -> torch.Tensor:
        pooled = state.pooled().to(self.fc.weight.dtype)
        return self.fc(self.dropout(pooled))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, C)`` from tokens ``(B, L, D)``, pooled chunk by chunk."""
        return self.classify(pool_in_chunks(self, tokens))

    def attention(self, tokens: torch.Tensor) -> torch.Tensor:
        """Softmax attention weights ``(B, L)``: where the model looked."""
        return torch.softmax(self.scores(self.norm(tokens)).float(), dim=1)


@HEADS.register("mean")
class MeanPoolClassifier(nn.Module):
    """Mean of tokens, then a linear classifier (the simple baseline)."""

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.0, **_ignored) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)

    def partial(self, tokens: torch.Tensor) -> PoolState:
        h = _wide(self.norm(tokens))
        b, l = h.shape[:2]
        zeros = h.new_zeros(b, 1)
        return PoolState(zeros, h.new_full((b, 1), float(l)), h.sum(dim=1))

    def classify(self, state: PoolState) -> torch.Tensor:
        return self.fc(self.dropout(state.pooled().to(self.fc.weight.dtype)))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.classify(pool_in_chunks(self, tokens))


class SegmentationHead(nn.Module):
    """Per-token class logits, optionally ``upsample x upsample`` sub-tokens per token.

    With ``upsample`` u each token predicts a u x u block of the heatmap (a learned
    sub-pixel layout, as in pixel shuffle), giving a finer grid at no extra context cost.
    """

    def __init__(self, dim: int, num_classes: int, upsample: int = 1) -> None:
        super().__init__()
        if upsample < 1:
            raise ValueError(f"upsample must be >= 1, got {upsample}")
        self.num_classes = num_classes
        self.upsample = upsample
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes * upsample * upsample)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, L, u, u, C)`` for tokens ``(B, L, D)``, chunk by chunk under autograd."""
        b, l, _ = tokens.shape
        u = self.upsample
        logits = _in_pieces(lambda piece: (self.fc(self.norm(piece)),), tokens, self, POOL_CHUNK)
        return torch.cat([part[0] for part in logits], dim=1).reshape(b, l, u, u, self.num_classes)


def create_classifier(pooling: str, dim: int, num_classes: int, **kwargs) -> nn.Module:
    """Build a slide classification head by pooling name (``attention`` or ``mean``)."""
    return HEADS.create(pooling, dim=dim, num_classes=num_classes, **kwargs)
