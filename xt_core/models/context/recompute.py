"""Training memory that does not grow with a segment's activations: recomputation.

A context encoder's autograd graph over a whole slide keeps every layer's activations for
every token (about 100 KiB a token for a small Transformer-XL). With recomputation each
segment (Transformer-XL), each (layer, segment) pair (Mamba) or each layer (global
attention) runs under :func:`torch.utils.checkpoint.checkpoint`: forward keeps only the
piece's inputs (the segment, the carried memory or state), and backward runs the piece
again with autograd, one at a time, in reverse order, back-propagating into the carried
state of the piece before. The gradient is that of a plain backward pass (the same
operations, dropout and sampling replayed from the saved RNG state); the price is one more
forward pass of the context encoder, small next to the region encoder's.

Every encoder takes ``recompute`` (default True); it acts only when autograd is recording.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def records_grad(*tensors: Any, module: nn.Module | None = None) -> bool:
    """Whether autograd is recording for one of ``tensors`` or for ``module``'s parameters:
    the one test of "will a backward come through here" for every piece that keeps less for it."""
    if not torch.is_grad_enabled():
        return False
    if any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors):
        return True
    return module is not None and any(p.requires_grad for p in module.parameters())


def recomputing(module: nn.Module, *tensors: Any) -> bool:
    """Whether ``module`` should recompute now: it is asked to, and autograd is recording
    for its parameters or for one of ``tensors``."""
    return bool(getattr(module, "recompute", False)) and records_grad(*tensors, module=module)


def checkpointed(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` keeping only its inputs for backward, which runs it again (RNG replayed)."""
    return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=True)
