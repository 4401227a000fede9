"""Heads: a slide label from all context tokens, and a class per token for the heatmap.

The classification head's attention pooling is written so it can also run over a stream
of token chunks in O(1) memory (an online softmax, as flash attention keeps it): inference
never needs every token's pooled state at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from xt_core.models.registry import Registry

HEADS: Registry[nn.Module] = Registry("head")


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
        s = self.scores(h).float()
        m = s.max(dim=1, keepdim=True).values
        w = torch.exp(s - m)
        return PoolState(m, w.sum(dim=1, keepdim=True), torch.einsum("bl,bld->bd", w, h.float()))

    def classify(self, state: PoolState) -> torch.Tensor:
        pooled = state.pooled().to(self.fc.weight.dtype)
        return self.fc(self.dropout(pooled))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, C)`` from tokens ``(B, L, D)``."""
        return self.classify(self.partial(tokens))

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
        h = self.norm(tokens).float()
        b, l = h.shape[:2]
        zeros = torch.zeros(b, 1, device=h.device)
        return PoolState(zeros, torch.full((b, 1), float(l), device=h.device), h.sum(dim=1))

    def classify(self, state: PoolState) -> torch.Tensor:
        return self.fc(self.dropout(state.pooled().to(self.fc.weight.dtype)))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.classify(self.partial(tokens))


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
        """Logits ``(B, L, u, u, C)`` for tokens ``(B, L, D)``."""
        b, l, _ = tokens.shape
        u = self.upsample
        return self.fc(self.norm(tokens)).reshape(b, l, u, u, self.num_classes)


def create_classifier(pooling: str, dim: int, num_classes: int, **kwargs) -> nn.Module:
    """Build a slide classification head by pooling name (``attention`` or ``mean``)."""
    return HEADS.create(pooling, dim=dim, num_classes=num_classes, **kwargs)
