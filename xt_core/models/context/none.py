"""``none``: no context at all, the region-only baseline.

Kept as a registered encoder so that a comparison of "with context" against "without"
changes one config field and nothing else.
"""

from __future__ import annotations

from typing import Optional

import torch

from xt_core.models.context.base import CONTEXT_ENCODERS, ContextEncoder


@CONTEXT_ENCODERS.register("none")
class NoContext(ContextEncoder):
    """Returns the region tokens unchanged."""

    def __init__(self, dim: int, positions: str = "absolute", **_ignored) -> None:
        super().__init__()
        self.dim = dim
        self.positions = positions  # only how the model prepares the tokens; nothing here uses it

    def forward(self, tokens: torch.Tensor, coords: Optional[torch.Tensor] = None) -> torch.Tensor:
        return tokens
