"""Training memory that does not grow with a segment's activations: recomputation.

A context encoder's autograd graph over a whole slide keeps every layer's activations for
every token (about 100 KiB a token for a small Transformer-XL). Every encoder takes
``recompute`` (default True), which acts only when autograd is recording, in one of two ways:

- One autograd node for the whole encoder (:func:`recomputed_pass`: Transformer-XL, Mamba on
  the PyTorch scan, non-causal global attention without dropout). Forward runs without autograd
  straight into one output tensor and keeps only the tokens; backward runs the pieces again with
  autograd, one at a time, and writes each one's token gradient into one gradient tensor
  (Transformer-XL in forward order, its memory rebuilt on the way; Mamba layer by layer,
  segments in reverse reading order, back-propagating into the state carried from the segment
  before; global attention layer by layer, chunk of queries by chunk: :mod:`attention_plan`). A
  step keeps a few sequence-sized tensors made once, plus one piece's working memory. The heads
  do the same over chunks of tokens (:func:`chunked_pass`).
- :func:`torch.utils.checkpoint.checkpoint` per piece (causal HyperAttention and global attention
  with dropout per layer, HyperAttention also per chunk of queries, Mamba on mamba-ssm's kernel
  per layer, sequences within one segment or chunk): forward keeps each piece's inputs and
  output, backward runs the piece again.

Either way the gradient is that of a plain backward pass (the same operations, dropout and
sampling replayed from the saved RNG state); the price is more forward work in the context
encoder, small next to the region encoder's.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import nn
from torch.autograd.function import once_differentiable
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


def trainable_parameters(module: nn.Module) -> list[torch.Tensor]:
    """The parameters of ``module`` that take gradients: what a one-node pass returns gradients for."""
    return [p for p in module.parameters() if p.requires_grad]


def _autocast_kind(device: torch.device) -> str:
    """The autocast device type for tensors on ``device`` (autocast knows ``cuda`` and ``cpu``)."""
    return device.type if device.type in ("cuda", "cpu") else "cpu"


def checkpointed(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` keeping only its inputs for backward, which runs it again (RNG replayed)."""
    return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=True)


# ----------------------------------------------------------------------------- whole-pass recomputation
# Checkpointing piece by piece bounds the activations, but autograd still keeps what joins the
# pieces: every piece's output until the join, every piece's input gradient until the split
# gathers them, the memories and states handed between pieces. Those are small tensors made
# one per piece and alive for the whole step; between them go each piece's transient blocks,
# and on glibc that interleaving grows the heap with the sequence (measured: ~6 KiB a token of
# resident memory for a Transformer-XL step whose live tensors were ~2 KiB a token). A
# ``SequencePlan`` instead runs the whole encoder as one autograd node: forward without
# autograd, straight into one output tensor; backward recomputes the pieces with autograd, one
# at a time, and writes each piece's input gradient into one gradient tensor. What a step keeps
# is then a few sequence-sized tensors made once, plus one piece's working memory.


class Replay:
    """What a forward pass ran under, so that backward runs its pieces again the same way:
    the RNG states (CPU, and the tokens' accelerator) and autocast."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.autocast_kind = _autocast_kind(device)
        self.autocast_enabled = torch.is_autocast_enabled(self.autocast_kind)
        self.autocast_dtype = torch.get_autocast_dtype(self.autocast_kind)

    def autocast(self) -> torch.autocast:
        """Autocast as it was in forward (also for rebuilding a piece's input without autograd)."""
        return torch.autocast(self.autocast_kind, dtype=self.autocast_dtype, enabled=self.autocast_enabled)

    @contextmanager
    def replaying(self) -> Iterator[None]:
        """Autograd on, autocast as in forward, the RNG as it was when captured (and the
        caller's RNG state restored afterwards, so replaying draws nothing from it). The
        vector-Jacobian products taken inside (:func:`piece_gradients`) run without autocast,
        as a plain backward pass does."""
        devices = [self.device] if self.cuda_rng is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu_rng)
            if self.cuda_rng is not None:
                torch.cuda.set_rng_state(self.cuda_rng, self.device)
            with torch.enable_grad(), self.autocast():
                yield


def piece_gradients(
    outputs: Sequence[torch.Tensor], grads: Sequence[Optional[torch.Tensor]], inputs: Sequence[Optional[torch.Tensor]]
) -> list[Optional[torch.Tensor]]:
    """Gradients of ``inputs`` (None where an input is None, does not require grad or is not
    reached) from ``outputs`` whose gradients are ``grads`` (outputs with a None gradient or
    no graph are left out): one recomputed piece's vector-Jacobian product."""
    pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
    wanted = [i for i, t in enumerate(inputs) if t is not None and t.requires_grad]
    result: list[Optional[torch.Tensor]] = [None] * len(inputs)
    if not pairs or not wanted:
        return result
    with torch.autocast(_autocast_kind(pairs[0][0].device), enabled=False):  # backward as plain autograd runs it
        found = torch.autograd.grad(
            [o for o, _ in pairs],
            [inputs[i] for i in wanted],
            [g.to(o.dtype) for o, g in pairs],
            allow_unused=True,
        )
    for i, g in zip(wanted, found):
        result[i] = g
    return result


class GradientSum:
    """Parameter gradients summed over pieces, in float32 at least (half-precision gradients summed
    over many pieces would round), cast back to each parameter's dtype at the end."""

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        self.params = list(params)
        self.sums: list[Optional[torch.Tensor]] = [None] * len(self.params)

    def add(self, grads: Sequence[Optional[torch.Tensor]]) -> None:
        for i, g in enumerate(grads):
            if g is None:
                continue
            if self.sums[i] is None:  # a copy: autograd may hand back a tensor the caller still uses
                self.sums[i] = g.to(torch.promote_types(g.dtype, torch.float32), copy=True)
            else:
                self.sums[i].add_(g)

    def result(self) -> list[Optional[torch.Tensor]]:
        """One gradient per parameter, in ``params`` order, in each parameter's dtype."""
        return [None if s is None else s.to(p.dtype) for s, p in zip(self.sums, self.params)]


class SequencePlan:
    """How an encoder runs a whole sequence as one autograd node (see :func:`recomputed_pass`).

    ``run(tokens)`` is the forward pass (called without autograd; returns a new tensor).
    ``backward(tokens, grad_out, replay, grads)`` recomputes the pieces under ``replay`` and
    returns the tokens' gradient (None when they need none), adding the parameters' into
    ``grads`` (a :class:`GradientSum` over ``params``, the parameters the pieces use)."""

    params: list[torch.Tensor]

    def run(self, tokens: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def backward(
        self, tokens: torch.Tensor, grad_out: torch.Tensor, replay: Replay, grads: GradientSum
    ) -> Optional[torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


class _RecomputedPass(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan: SequencePlan, tokens: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.plan = plan
        ctx.replay = Replay(tokens.device)
        ctx.save_for_backward(tokens)
        return plan.run(tokens)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        (tokens,) = ctx.saved_tensors
        plan: SequencePlan = ctx.plan
        grads = GradientSum(plan.params)
        grad_tokens = plan.backward(tokens, grad_out, ctx.replay, grads)  # the plan stays: retain_graph
        return (None, grad_tokens if ctx.needs_input_grad[1] else None, *grads.result())


def recomputed_pass(plan: SequencePlan, tokens: torch.Tensor) -> torch.Tensor:
    """``plan.run(tokens)`` as one autograd node that keeps only ``tokens``: its backward
    recomputes the plan's pieces one at a time and writes their gradients into one tensor.
    Not twice differentiable."""
    return _RecomputedPass.apply(plan, tokens, *plan.params)


class _ChunkedPass(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn: Callable[..., tuple], chunk: int, tokens: torch.Tensor, *params: torch.Tensor):
        ctx.set_materialize_grads(False)
        ctx.fn, ctx.chunk, ctx.params = fn, chunk, params
        ctx.replay = Replay(tokens.device)
        ctx.save_for_backward(tokens)
        outputs = [fn(piece) for piece in tokens.split(chunk, dim=1)]
        ctx.per_piece = len(outputs[0])
        return tuple(t for piece in outputs for t in piece)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: Optional[torch.Tensor]):
        (tokens,) = ctx.saved_tensors
        wants_tokens = ctx.needs_input_grad[2]
        grad_tokens = torch.empty_like(tokens) if wants_tokens else None
        sums = GradientSum(ctx.params)
        n = ctx.per_piece
        with ctx.replay.replaying():
            for i, start in enumerate(range(0, tokens.shape[1], ctx.chunk)):
                piece = tokens[:, start : start + ctx.chunk].detach().requires_grad_(wants_tokens)
                found = piece_gradients(ctx.fn(piece), grads[i * n : (i + 1) * n], [piece, *ctx.params])
                if grad_tokens is not None:
                    grad_tokens[:, start : start + ctx.chunk] = 0 if found[0] is None else found[0]
                sums.add(found[1:])
        return (None, None, grad_tokens, *sums.result())


def chunked_pass(fn: Callable[..., tuple], tokens: torch.Tensor, chunk: int, module: nn.Module) -> list[tuple]:
    """``fn`` (tokens-wise: no mixing across tokens; returns a tuple of tensors) on each chunk of
    ``chunk`` tokens, as one autograd node: forward keeps only ``tokens``; backward runs each
    chunk again (RNG replayed) and writes its token gradient into one tensor. Returns each chunk's
    tuple of outputs.

    Checkpointing each chunk instead would give each chunk's gradient its own tensor, all kept until
    the split joins them into one more (two sequence-sized gradients per head at once)."""
    flat = _ChunkedPass.apply(fn, chunk, tokens, *trainable_parameters(module))
    pieces = -(-tokens.shape[1] // chunk)
    n = len(flat) // pieces
    return [tuple(flat[i * n : (i + 1) * n]) for i in range(pieces)]
