"""One optimisation step on one slide, in memory bounded by a batch of regions.

A slide is a bag of up to ~100,000 regions; a plain backward pass through the region
encoder would keep every region's activations at once. The step therefore runs in passes
(``mode="exact"``, the default)::

    pass 1   no gradient: encode every region, batch by batch -> tokens T (N, t*t, D)
             (small: a few floats per token), saving the RNG state before each batch
    context  T.requires_grad_(); loss = loss(heads(context(T)))   (the small sequence)
             loss.backward() -> context and head gradients, and dL/dT
    pass 2   for each batch again: restore its RNG state, re-encode WITH gradient,
             tokens_b.backward(dL/dT[b])  -> region encoder (and projection) gradients

By the chain rule the parameter gradients are exactly those of one backward pass through
the whole graph (tested to 1e-4 relative), while at most one batch of region activations is
alive at a time. The price is a second forward pass of the region encoder (about 1.3x the
compute of a plain step) and reading the regions twice. For pass 2 to recompute the very
tokens of pass 1:

* augmentation is drawn from per-region seeds (:mod:`xt_core.train.augment`), not a global
  generator, so both passes get bit-identical pixels;
* the RNG state is saved before each pass-1 batch and restored before the same pass-2 batch
  (as :mod:`torch.utils.checkpoint` does), so dropout / drop-path masks repeat; the global
  RNG is left as pass 1 left it;
* pass 2 checks each re-encoded batch against pass 1's tokens (one comparison, no extra
  forward) and raises :class:`ReencodingError`, naming the region source, when they differ
  beyond rounding: a source with unseeded randomness would otherwise give silently wrong
  gradients;
* BatchNorm layers of the region encoder are kept in eval mode (frozen running statistics,
  :func:`set_train_mode` with ``freeze_bn=True``, the default). In train mode BatchNorm would
  normalise with statistics of whatever regions share a batch and update its running
  statistics twice per step; frozen statistics are also the usual choice when fine-tuning a
  pretrained backbone with small batches. With ``freeze_bn=False`` the step is still exact
  for the batches it uses, and the running statistics are updated in both passes.

``mode="xl_detached"`` (Transformer-XL context only) is the paper's way to bound the context
encoder's memory too. Transformer-XL detaches its memory between segments (no gradient flows
from a segment into earlier ones, by design), so the gradient of a segment's outputs can be
computed from that segment alone given its incoming memory. The step runs the context
without gradient over all segments, keeping each segment's incoming memory (depth x mem_len
tokens) and its outputs; the heads and loss run on the outputs (with gradient) to give
dL/d(outputs); then segment by segment the context is re-run with gradient from its saved
memory and back-propagated, filling dL/dT; pass 2 over the regions is as above. The
gradients equal those of ``mode="exact"`` (tested) because the model's own forward
detaches the memory too; what changes is memory: ``exact`` keeps the context encoder's
autograd graph for the whole sequence at once (every layer's activations for all L tokens,
some tens of floats per token and layer), ``xl_detached`` one segment's. It costs a second
context forward pass, which is cheap next to the region encoder.

``mode="frozen"``: the region encoder is frozen and its features (before the projection to
the context width) are computed once and cached (:mod:`xt_core.train.features`); a step is
projection + context + heads on the cached features: no pixels, fast on a CPU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xt_core.errors import XTError
from xt_core.models.position import flatten_region_maps
from xt_core.models.xt import XTModel
from xt_core.slide import Slide
from xt_core.stream import iter_region_batches
from xt_core.tokenize import RegionGrid
from xt_core.train.annotations import IGNORE_INDEX
from xt_core.train.augment import AugmentConfig, augment_regions

__all__ = [
    "LossWeights",
    "ReencodingError",
    "RegionSource",
    "SlideRegions",
    "SlideTargets",
    "StepResult",
    "TensorRegions",
    "autocast_factory",
    "check_reencoded",
    "encode_features",
    "forward_features",
    "forward_regions",
    "set_train_mode",
    "slide_loss",
    "train_step",
]

AmpFactory = Callable[[], ContextManager]


# ----------------------------------------------------------------------------- sources
class RegionSource(Protocol):
    """The regions of one slide: their grid places and their pixels, batch by batch, in order."""

    rows: torch.Tensor
    cols: torch.Tensor

    def __len__(self) -> int: ...

    def batches(self, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
        """``(offset, uint8 images (b, 3, R, R))`` for consecutive regions, the same every call."""
        ...


class TensorRegions:
    """Regions already in memory (tests, small images): ``images`` uint8 ``(N, 3, R, R)``."""

    def __init__(
        self, images: torch.Tensor, rows, cols, *, seeds: np.ndarray | None = None,
        augment: AugmentConfig | None = None,
    ) -> None:
        self.images = images
        self.rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        self.cols = torch.as_tensor(np.asarray(cols), dtype=torch.long)
        self.seeds = seeds
        self.augment = augment

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        augment = ", augmented" if self.augment is not None else ""
        return f"{type(self).__name__}({len(self)} regions{augment})"

    def batches(self, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, len(self), batch_size):
            images = self.images[start : start + batch_size]
            if self.augment is not None and self.seeds is not None:
                images = augment_regions(images, self.seeds[start : start + batch_size], self.augment)
            yield start, images


class SlideRegions:
    """Regions ``indices`` of ``grid`` read from ``slide`` by ``workers`` threads, augmented per region."""

    def __init__(
        self, slide: Slide, grid: RegionGrid, indices: np.ndarray, *, workers: int = 2,
        seeds: np.ndarray | None = None, augment: AugmentConfig | None = None, pin_memory: bool = False,
    ) -> None:
        self.slide, self.grid = slide, grid
        self.indices = np.asarray(indices, dtype=np.int64)
        r, c = np.divmod(self.indices, grid.cols)
        self.rows = torch.from_numpy(r)
        self.cols = torch.from_numpy(c)
        self.workers = workers
        self.seeds = seeds
        self.augment = augment
        self.pin_memory = pin_memory

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        augment = ", augmented" if self.augment is not None else ""
        return f"{type(self).__name__}({getattr(self.slide, 'path', self.slide)}, {len(self)} regions{augment})"

    def batches(self, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
        start = 0
        for batch in iter_region_batches(self.slide, self.grid, batch_size=batch_size, workers=self.workers,
                                         indices=self.indices, as_tensor=True, pin_memory=self.pin_memory):
            images = batch.images
            if self.augment is not None and self.seeds is not None:
                images = augment_regions(images, self.seeds[start : start + len(batch)], self.augment)
            yield start, images
            start += len(batch)


# ----------------------------------------------------------------------------- targets, loss
@dataclass
class SlideTargets:
    """What a slide should give: a class index and/or per-cell classes ``(L, u, u)`` (-100: none)."""

    label: int | None = None
    seg: torch.Tensor | None = None


@dataclass
class LossWeights:
    classification: float = 1.0
    segmentation: float = 1.0
    label_smoothing: float = 0.0


def slide_loss(
    outputs: dict[str, torch.Tensor], targets: SlideTargets, weights: LossWeights
) -> tuple[torch.Tensor | None, dict[str, float]]:
    """Weighted classification + segmentation loss of one slide; ``(None, {})`` when neither applies.

    Segmentation is the mean cross-entropy over the annotated cells (ignore index -100).
    """
    total: torch.Tensor | None = None
    parts: dict[str, float] = {}
    logits = outputs.get("logits")
    if weights.classification > 0 and targets.label is not None and logits is not None:
        target = torch.tensor([targets.label], device=logits.device)
        ce = F.cross_entropy(_full(logits), target, label_smoothing=weights.label_smoothing)
        parts["cls_loss"] = float(ce.detach())
        total = weights.classification * ce
    seg = outputs.get("seg_logits")
    if weights.segmentation > 0 and targets.seg is not None and seg is not None:
        tgt = targets.seg.to(seg.device).reshape(-1)
        if tgt.numel() != seg[0].numel() // seg.shape[-1]:
            raise ValueError(f"{tgt.numel()} segmentation targets for {seg[0].numel() // seg.shape[-1]} cells")
        if bool((tgt != IGNORE_INDEX).any()):
            ce = F.cross_entropy(_full(seg).reshape(-1, seg.shape[-1]), tgt, ignore_index=IGNORE_INDEX)
            parts["seg_loss"] = float(ce.detach())
            total = weights.segmentation * ce if total is None else total + weights.segmentation * ce
    if total is not None:
        parts["loss"] = float(total.detach())
    return total, parts


# ----------------------------------------------------------------------------- helpers
def set_train_mode(model: XTModel, train: bool = True, freeze_bn: bool = True) -> XTModel:
    """``model.train(train)``, with the region encoder's BatchNorm layers in eval mode when ``freeze_bn``."""
    model.train(train)
    if train and freeze_bn:
        for module in model.region_encoder.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    return model


def autocast_factory(device: torch.device, amp: str = "auto") -> tuple[AmpFactory, torch.dtype | None]:
    """A context-manager factory for autocast on CUDA (``auto``: bf16 where supported, else fp16), and its dtype."""
    if device.type != "cuda" or amp == "none":
        return contextlib.nullcontext, None
    if amp == "auto":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return (lambda: torch.autocast("cuda", dtype=dtype)), dtype


def encode_features(model: XTModel, images: torch.Tensor) -> torch.Tensor:
    """Region pixels -> pooled backbone features ``(N, t*t, C)``: ``encode_regions`` without ``proj``."""
    maps = model.token_pool(model.region_encoder(images))
    return flatten_region_maps(maps).reshape(maps.shape[0], model.tokens_per_region, -1)


def _full(x: torch.Tensor) -> torch.Tensor:
    """Half precision (autocast outputs) -> float32; float32/float64 unchanged."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _work_dtype(model: XTModel) -> torch.dtype:
    """float32, or float64 for a model in double precision (as the gradient tests use)."""
    return torch.promote_types(model.proj.weight.dtype, torch.float32)


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple, device: torch.device) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def _fork_rng(device: torch.device):
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def _backward(loss: torch.Tensor, scale: float, scaler) -> None:
    scaled = loss * scale
    if scaler is not None:
        scaled = scaler.scale(scaled)
    scaled.backward()


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


# ----------------------------------------------------------------------------- the step
@dataclass
class StepResult:
    """What one slide's step gives back (the gradients are accumulated in the model)."""

    loss: float | None
    parts: dict[str, float] = field(default_factory=dict)
    logits: torch.Tensor | None = None  # (C,) float32 on the CPU, detached
    regions: int = 0


def _encode_all(
    model: XTModel, source: RegionSource, batch_size: int, device: torch.device, amp: AmpFactory,
    save_rng: bool,
) -> tuple[torch.Tensor, list]:
    """Pass 1: tokens of every region (no gradient), with the RNG state before each batch."""
    n, tpr, dim = len(source), model.tokens_per_region, model.config.context_dim
    tokens = torch.empty((n, tpr, dim), dtype=_work_dtype(model), device=device)
    states = []
    with torch.no_grad():
        for start, images in source.batches(batch_size):
            if save_rng:
                states.append(_rng_state(device))
            with amp():
                out = model.encode_regions(images.to(device, non_blocking=True))
            tokens[start : start + images.shape[0]] = out.to(tokens.dtype)
    return tokens, states


class ReencodingError(XTError):
    """Pass 2 of an exact step re-encoded a batch to other tokens than pass 1: the region source
    (or the region encoder) is not reproducible, and the step's gradient would be wrong."""


#: How far a re-encoded batch may be from pass 1's tokens, relative to the batch's largest
#: token entry: kernels may differ at rounding level (autocast, non-deterministic GPU
#: kernels); different pixels or unreplayed randomness move tokens by orders of magnitude more.
REENCODE_TOLERANCE = 1e-3


def check_reencoded(source: RegionSource, start: int, reencoded: torch.Tensor, first: torch.Tensor,
                    tolerance: float = REENCODE_TOLERANCE) -> None:
    """Raise :class:`ReencodingError` when pass 2's tokens of regions ``start...`` are not pass 1's."""
    reencoded = reencoded.detach().to(first.dtype)
    scale = float(first.abs().max()) if first.numel() else 0.0
    difference = float((reencoded - first).abs().max()) if first.numel() else 0.0
    if difference > tolerance * max(scale, torch.finfo(first.dtype).tiny) or difference != difference:
        end = start + first.shape[0] - 1
        raise ReencodingError(
            f"pass 2 of the exact step re-encoded regions {start}-{end} of {source!r} to other tokens than "
            f"pass 1 (largest difference {difference:.3g}, {difference / max(scale, 1e-30):.1%} of the largest "
            f"token entry; tolerance {tolerance:.1%}), so the gradient would be wrong. A region source must "
            "give the same pixels on every call (draw augmentation from per-region seeds, "
            "xt_core.train.augment.region_seeds), and the region encoder may only draw from torch's RNG, "
            "which the step replays")


def _backprop_regions(
    model: XTModel, source: RegionSource, batch_size: int, device: torch.device, amp: AmpFactory,
    grad_tokens: torch.Tensor, states: list, tokens: torch.Tensor,
) -> None:
    """Pass 2: re-encode each batch with gradient, check it is pass 1's, back-propagate its token gradients."""
    tokens = tokens.detach()
    with _fork_rng(device):
        for k, (start, images) in enumerate(source.batches(batch_size)):
            if states:
                _set_rng_state(states[k], device)
            with amp():
                out = model.encode_regions(images.to(device, non_blocking=True))
            check_reencoded(source, start, out, tokens[start : start + images.shape[0]])
            grad = grad_tokens[start : start + images.shape[0]]
            out.to(grad.dtype).backward(grad)
            del out


def _xl_context_grad(
    model: XTModel, tokens: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, targets: SlideTargets,
    weights: LossWeights, amp: AmpFactory, scale: float, scaler,
) -> tuple[torch.Tensor | None, torch.Tensor | None, dict, dict]:
    """Context + heads segment by segment with detached memory; returns (loss, dL/dT, parts, outputs)."""
    from xt_core.models.context.transformer_xl import TransformerXLContext

    ctx = model.context
    if not isinstance(ctx, TransformerXLContext):
        raise ValueError(f"mode 'xl_detached' needs the transformer_xl context encoder, not {type(ctx).__name__}")
    device = tokens.device
    n, tpr, dim = tokens.shape
    seq = tokens.reshape(1, -1, dim)
    coords = model.token_coords(rows.to(device), cols.to(device))
    bounds = [(a, min(a + ctx.segment_len, seq.shape[1])) for a in range(0, seq.shape[1], ctx.segment_len)]
    memories, states, outputs = [], [], []

    def keys(a: int, b: int, memory) -> torch.Tensor:
        """Grid places of a segment's keys: its memory's tokens (those just before it), then its own."""
        return coords[a - (memory[0].shape[1] if memory else 0) : b]

    with torch.no_grad(), amp():
        memory = ctx.init_memory(1, device, model.context_input(seq[:, :1], coords[:1]).dtype)
        for a, b in bounds:
            memories.append(memory)
            states.append(_rng_state(device))
            segment = model.context_input(seq[:, a:b], coords[a:b])
            out, memory = ctx.forward_segment(segment, memory, keys(a, b, memory))
            outputs.append(_full(out))
    context = torch.cat(outputs, dim=1).requires_grad_()
    with amp():
        head_out = model.heads(context)
    loss, parts = slide_loss(head_out, targets, weights)
    if loss is None:
        return None, None, parts, head_out
    _backward(loss, scale, scaler)
    grad_context = context.grad
    grad_tokens = torch.zeros_like(seq)
    with _fork_rng(device):
        for (a, b), memory, state in zip(bounds, memories, states):
            _set_rng_state(state, device)
            part = seq[:, a:b].detach().requires_grad_()
            with amp():
                out, _ = ctx.forward_segment(model.context_input(part, coords[a:b]), memory, keys(a, b, memory))
            out.to(grad_context.dtype).backward(grad_context[:, a:b])
            grad_tokens[:, a:b] = part.grad
    return loss, grad_tokens.reshape(n, tpr, dim), parts, head_out


def train_step(
    model: XTModel,
    source: RegionSource | None,
    targets: SlideTargets,
    *,
    mode: str = "exact",
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    amp: AmpFactory = contextlib.nullcontext,
    weights: LossWeights | None = None,
    scale: float = 1.0,
    scaler=None,
    features: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
    cols: torch.Tensor | None = None,
) -> StepResult:
    """Forward and backward of one slide; gradients ACCUMULATE into ``model``'s parameters.

    ``mode``: ``exact`` / ``xl_detached`` take the regions from ``source``; ``frozen`` takes
    cached ``features`` ``(N, t*t, C)`` with their grid ``rows``/``cols``. ``scale``
    multiplies the loss before backward (``1 / slides_per_step`` when accumulating);
    ``scaler`` is a :class:`torch.amp.GradScaler` for fp16. The optimiser step is the caller's.
    """
    weights = weights or LossWeights()
    device = torch.device(device)
    if mode == "frozen":
        if features is None or rows is None or cols is None:
            raise ValueError("mode 'frozen' needs features, rows and cols")
        with amp():
            out = model.heads(model.contextualize(model.proj(features.to(device)), rows, cols))
        loss, parts = slide_loss(out, targets, weights)
        if loss is not None:
            _backward(loss, scale, scaler)
        return _result(loss, parts, out, features.shape[0])
    if mode not in ("exact", "xl_detached"):
        raise ValueError(f"unknown training mode {mode!r}; choose exact, xl_detached or frozen")
    if source is None:
        raise ValueError(f"mode {mode!r} needs a region source")
    encoder_trains = _trainable(model.region_encoder) or _trainable(model.proj)
    tokens, states = _encode_all(model, source, batch_size, device, amp, save_rng=encoder_trains)
    rows_t, cols_t = source.rows, source.cols
    if mode == "xl_detached":
        loss, grad_tokens, parts, out = _xl_context_grad(
            model, tokens, rows_t, cols_t, targets, weights, amp, scale, scaler)
    else:
        tokens.requires_grad_()
        with amp():
            out = model.heads(model.contextualize(tokens, rows_t, cols_t))
        loss, parts = slide_loss(out, targets, weights)
        grad_tokens = None
        if loss is not None:
            _backward(loss, scale, scaler)
            grad_tokens = tokens.grad
    if loss is not None and grad_tokens is not None and encoder_trains:
        _backprop_regions(model, source, batch_size, device, amp, grad_tokens, states, tokens)
    return _result(loss, parts, out, len(source))


def _result(loss, parts, out, regions: int) -> StepResult:
    logits = out.get("logits")
    return StepResult(
        loss=None if loss is None else float(loss.detach()),
        parts=parts,
        logits=None if logits is None else logits.detach().float()[0].cpu(),  # metrics only
        regions=int(regions),
    )


# ----------------------------------------------------------------------------- inference
def forward_regions(
    model: XTModel, source: RegionSource, *, batch_size: int = 8, device: str | torch.device = "cpu",
    amp: AmpFactory = contextlib.nullcontext,
) -> dict[str, torch.Tensor]:
    """Head outputs of one slide without gradient, streaming the regions (evaluation)."""
    device = torch.device(device)
    tokens, _ = _encode_all(model, source, batch_size, device, amp, save_rng=False)
    with torch.no_grad(), amp():
        out = model.heads(model.contextualize(tokens, source.rows, source.cols))
    return {k: _full(v) for k, v in out.items()}


def forward_features(
    model: XTModel, features: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, *,
    device: str | torch.device = "cpu", amp: AmpFactory = contextlib.nullcontext,
) -> dict[str, torch.Tensor]:
    """Head outputs from cached region features, without gradient."""
    with torch.no_grad(), amp():
        out = model.heads(model.contextualize(model.proj(features.to(device)), rows, cols))
    return {k: _full(v) for k, v in out.items()}

