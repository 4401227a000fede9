"""Building blocks shared by the transformer context encoders (LLaMA-style, as in xT).

xT's context layers are LLaMA layers: pre-norm residual blocks with RMSNorm and a gated
(SwiGLU) MLP. Both ``attention`` and ``transformer_xl`` use the pieces below so that the
two differ only in how tokens attend to each other; ``mamba`` uses the same RMSNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def default_heads(dim: int, head_dim: int = 64) -> int:
    """A head count near ``dim / head_dim`` that divides ``dim``.

    Head width 64 is what fused attention kernels are tuned for; small test widths
    (e.g. 32 or 48) fall back to one head rather than to tiny, useless heads.
    """
    heads = max(1, round(dim / head_dim))
    while dim % heads:
        heads -= 1
    return heads


def check_heads(dim: int, heads: int | None) -> int:
    """Resolve ``heads`` (``None`` = default) and insist that it divides ``dim``."""
    heads = default_heads(dim) if heads is None else int(heads)
    if heads < 1 or dim % heads:
        raise ValueError(f"heads={heads} must be positive and divide dim={dim}")
    return heads


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (no mean removal, no bias): the one norm of
    every context encoder (the transformers here, and Mamba with ``eps=1e-5`` as mamba-ssm).

    The statistics are taken in float32 at least (float64 stays float64), so that bf16 /
    fp16 activations of long sequences do not lose the normaliser to rounding; the gain is
    applied at that precision too and the result is returned in the input's dtype. The one
    parameter is ``weight``, the name both LLaMA and mamba-ssm checkpoints use.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        normed = wide * torch.rsqrt(wide.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (normed * self.weight.to(normed.dtype)).to(x.dtype)


def swiglu_hidden(dim: int, mlp_ratio: float, multiple_of: int = 8) -> int:
    """Hidden width of the gated MLP: 2/3 of ``mlp_ratio * dim`` (LLaMA's rule, which keeps
    the parameter count of a plain ``mlp_ratio`` MLP), rounded up for kernel-friendly shapes."""
    hidden = int(2 * mlp_ratio * dim / 3)
    return max(multiple_of, -(-hidden // multiple_of) * multiple_of)


class SwiGLU(nn.Module):
    """Gated MLP: ``W3(silu(W1 x) * W2 x)``."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = swiglu_hidden(dim, mlp_ratio)
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(self.dropout(F.silu(gate) * up))
