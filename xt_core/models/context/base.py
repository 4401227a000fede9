"""The one small API every context encoder answers.

A context encoder sees the region tokens of a whole slide as one sequence in raster
order, shape ``(batch, length, dim)``, and returns a sequence of the same shape. It also
receives each token's global grid place, ``coords (length, 2)`` of (row, col), so that
encoders with relative 2D positions (``positions: rope2d``, :mod:`rope`) can use offsets on
the slide rather than distances along the raster order; encoders that do not use them
ignore them, and ``coords=None`` means one row (the sequence index as the column). With
``positions`` ``absolute`` or ``normed`` the caller has already added absolute 2D sin-cos
positions to the tokens. Each implementation bounds its own working memory (segments with
memory, a chunked scan, query chunks) so that the caller can hand it the whole token
sequence of a large slide.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from xt_core.models.registry import Registry

CONTEXT_ENCODERS: Registry["ContextEncoder"] = Registry("context encoder")


class ContextEncoder(nn.Module):
    """Base class: ``forward(tokens (B, L, D), coords (L, 2) | None) -> (B, L, D)``.

    Subclasses set ``dim`` (the token width they take and give back) and ``positions``
    (one of :data:`~xt_core.models.context.rope.POSITION_MODES`: how the model should give
    them positions; the model reads it to prepare the tokens).
    """

    dim: int
    positions: str = "absolute"

    def forward(self, tokens: torch.Tensor, coords: Optional[torch.Tensor] = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def create_context_encoder(name: str, **kwargs) -> ContextEncoder:
    """Build a registered context encoder by name, e.g. ``create_context_encoder("mamba", dim=192)``."""
    # Importing the package registers every built-in encoder.
    import xt_core.models.context  # noqa: F401

    return CONTEXT_ENCODERS.create(name, **kwargs)
