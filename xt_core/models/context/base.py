"""The one small API every context encoder answers.

A context encoder sees the region tokens of a whole slide as one sequence in raster
order, shape ``(batch, length, dim)``, with the global 2D position already added by the
caller, and returns a sequence of the same shape. Each implementation bounds its own
working memory (segments with memory, a chunked scan, query chunks) so that the caller
can hand it the whole token sequence of a large slide.
"""

from __future__ import annotations

import torch
from torch import nn

from xt_core.models.registry import Registry

CONTEXT_ENCODERS: Registry["ContextEncoder"] = Registry("context encoder")


class ContextEncoder(nn.Module):
    """Base class: ``forward(tokens (B, L, D)) -> (B, L, D)``.

    Subclasses set ``dim`` (the token width they take and give back).
    """

    dim: int

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def create_context_encoder(name: str, **kwargs) -> ContextEncoder:
    """Build a registered context encoder by name, e.g. ``create_context_encoder("mamba", dim=192)``."""
    # Importing the package registers every built-in encoder.
    import xt_core.models.context  # noqa: F401

    return CONTEXT_ENCODERS.create(name, **kwargs)
