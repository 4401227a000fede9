"""``mamba``: a stack of Mamba (S6) blocks over the region tokens, as in xT.

Parameter names and shapes of :class:`MambaMixer` are those of mamba-ssm's ``Mamba``
module, and :class:`MambaBlock` uses mamba-ssm's ``Block`` attribute names (``norm``,
``mixer``), so weights move between this pure-PyTorch model and mamba-ssm with a plain
``load_state_dict``. When mamba-ssm is installed and the tokens are on CUDA, the scan
runs on its fused kernel (see :mod:`selective_scan`); everywhere else it is PyTorch.

Long slides are handled by streaming: each layer sees the sequence in segments of
``segment_len`` tokens and carries the mixer state (the last ``d_conv - 1`` conv inputs
and the ``(d_inner, d_state)`` SSM state) from one segment to the next, which gives the
same result as one pass while bounding the scan's working memory; a residual block's
segment can then overwrite its own input, so the whole stack runs in one sequence-sized
buffer.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from xt_core.models.context.base import CONTEXT_ENCODERS, ContextEncoder
from xt_core.models.context.layers import RMSNorm
from xt_core.models.context.recompute import (
    GradientSum,
    Replay,
    SequencePlan,
    checkpointed,
    piece_gradients,
    recomputed_pass,
    recomputing,
    trainable_parameters,
)
from xt_core.models.context.rope import check_coords, check_positions
from xt_core.models.context.selective_scan import DEFAULT_CHUNK_SIZE, fused_scan_available, selective_scan

#: mamba-ssm's RMSNorm epsilon (the transformers' norms use 1e-6).
NORM_EPS = 1e-5


class MixerState(NamedTuple):
    """What one segment hands the next so that streaming equals one whole pass."""

    conv: torch.Tensor  # (batch, d_inner, d_conv - 1): the last conv inputs, pre-activation
    ssm: torch.Tensor  # (batch, d_inner, d_state)


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """Scan parameters must not be rounded to half precision (mamba-ssm passes them as float32)."""
    return t if t.dtype == torch.float64 else t.float()


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """``x`` with ``softplus(x) = y``, written so it stays accurate for small ``y``."""
    return y + torch.log(-torch.expm1(-y))


class MambaMixer(nn.Module):
    """One Mamba (S6) mixer, with mamba-ssm's ``Mamba`` parameter names and shapes.

    ``forward(x (B, L, d_model), state=None, return_state=False)``: pass the
    :class:`MixerState` returned for one segment into the call for the next one.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: Union[int, str] = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.chunk_size = chunk_size

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner, padding=d_conv - 1, bias=True
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self._init_ssm_parameters(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def _init_ssm_parameters(self, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
        """Mamba's initialisation, so an untrained scan neither forgets at once nor never.

        Step sizes are spread log-uniformly over ``[dt_min, dt_max]`` (through the
        inverse softplus, since the scan applies softplus to ``dt_proj``'s output) and
        ``A = -(1, ..., d_state)`` per channel (the S4D-real spectrum) gives a range of
        memory lengths.
        """
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        log_dt = torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = torch.exp(log_dt).clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(_inverse_softplus(dt))
        spectrum = torch.arange(1, self.d_state + 1, dtype=torch.float32)
        self.A_log.copy_(torch.log(spectrum).expand(self.d_inner, -1))
        self.D.fill_(1.0)

    def _causal_conv(self, x: torch.Tensor, conv_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Depthwise causal conv with the previous segment's tail in place of the zero padding.

        Equals mamba's ``conv1d(x)[..., :L]`` when ``conv_state`` is zeros. Returns the
        conv output and the new tail (the last ``d_conv - 1`` inputs seen, across segments).
        """
        padded = torch.cat([conv_state.to(x.dtype), x], dim=-1)
        out = F.conv1d(padded, self.conv1d.weight, self.conv1d.bias, groups=self.d_inner)
        tail = padded[..., padded.shape[-1] - (self.d_conv - 1) :]
        return out, tail

    def forward(
        self,
        hidden: torch.Tensor,
        state: Optional[MixerState] = None,
        return_state: bool = False,
    ) -> Union[torch.Tensor, tuple[torch.Tensor, MixerState]]:
        batch, length, _ = hidden.shape
        xz = self.in_proj(hidden).transpose(1, 2)  # (B, 2 * d_inner, L)
        x, z = xz.chunk(2, dim=1)
        conv_state = None if state is None else state.conv
        ssm_state = None if state is None else state.ssm
        if conv_state is None:
            conv_state = x.new_zeros(batch, self.d_inner, self.d_conv - 1)
        x, conv_tail = self._causal_conv(x, conv_state)
        x = F.silu(x)

        x_dbl = self.x_proj(x.transpose(1, 2))  # (B, L, dt_rank + 2 * d_state)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        # dt_proj's bias goes to the scan as delta_bias, so the softplus sees it in float32.
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (B, d_inner, L)
        A = -torch.exp(_at_least_float32(self.A_log))
        result = selective_scan(
            x,
            delta,
            A,
            B.transpose(1, 2),
            C.transpose(1, 2),
            D=_at_least_float32(self.D),
            z=z,
            delta_bias=_at_least_float32(self.dt_proj.bias),
            delta_softplus=True,
            initial_state=ssm_state,
            return_last_state=return_state,
            chunk_size=self.chunk_size,
        )
        y, last_ssm = result if return_state else (result, None)
        out = self.out_proj(y.transpose(1, 2))
        return (out, MixerState(conv_tail, last_ssm)) if return_state else out


class MambaBlock(nn.Module):
    """Pre-norm residual block ``x + mixer(norm(x))`` (mamba-ssm ``Block`` names: ``norm``, ``mixer``)."""

    def __init__(self, dim: int, **mixer_kwargs) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, eps=NORM_EPS)
        self.mixer = MambaMixer(dim, **mixer_kwargs)

    def forward(
        self,
        x: torch.Tensor,
        state: Optional[MixerState] = None,
        return_state: bool = False,
    ) -> Union[torch.Tensor, tuple[torch.Tensor, MixerState]]:
        if not return_state:
            return x + self.mixer(self.norm(x), state)
        mixed, new_state = self.mixer(self.norm(x), state, return_state=True)
        return x + mixed, new_state


def _stream_through(block: MambaBlock, tokens: torch.Tensor, segment_len: int, recompute: bool = False) -> torch.Tensor:
    """Run ``block`` over ``tokens`` in segments, carrying its state, as if in one pass.

    Segments bound the scan's working memory. Used under plain autograd and on mamba-ssm's
    fused kernel, which cannot back-propagate through a carried state: there the sequence goes
    through whole, checkpointed as one piece with ``recompute``. (Recomputing training on the
    PyTorch scan goes through :class:`_LayersInPlace` instead.)
    """
    length = tokens.shape[1]
    if length <= segment_len or fused_scan_available(tokens):
        return checkpointed(block, tokens) if recompute else block(tokens)
    state: Optional[MixerState] = None
    outputs = []
    for segment in tokens.split(segment_len, dim=1):
        out, state = block(segment, state, return_state=True)
        outputs.append(out)
    return torch.cat(outputs, dim=1)


class _Window(NamedTuple):
    """One segment of a layer's reading order: positions ``start:stop`` of the sequence, read
    back to front if ``flipped``, or the positions ``index`` (a permuted order)."""

    start: int
    stop: int
    flipped: bool
    index: Optional[torch.Tensor]

    def read(self, x: torch.Tensor) -> torch.Tensor:
        if self.index is not None:
            return x.index_select(1, self.index)
        part = x[:, self.start : self.stop]
        return part.flip(1) if self.flipped else part

    def write(self, x: torch.Tensor, values: torch.Tensor) -> None:
        if self.index is not None:
            x.index_copy_(1, self.index, values.to(x.dtype))
        else:
            x[:, self.start : self.stop] = values.flip(1) if self.flipped else values


def _windows(length: int, segment_len: int, backwards: bool, order: Optional[torch.Tensor]) -> list[_Window]:
    """A layer's segments in the order it reads them: raster (``order`` None) or ``order``,
    front to back or (``backwards``) back to front."""
    windows = []
    for start in range(0, length, segment_len):
        stop = min(start + segment_len, length)
        if order is not None:
            reading = order.flip(0) if backwards else order
            windows.append(_Window(start, stop, False, reading[start:stop]))
        elif backwards:
            windows.append(_Window(length - stop, length - start, True, None))
        else:
            windows.append(_Window(start, stop, False, None))
    return windows


class _LayersInPlace(SequencePlan):
    """The Mamba stack as one autograd node, in one sequence-sized buffer.

    A residual Mamba block maps each segment to ``x + mixer(norm(x))`` given the state carried
    from the segment read before it, so a layer can overwrite its input segment by segment:
    forward runs every layer in place on one copy of the tokens (the final norm too) and keeps
    only the tokens. Backward needs each layer's input, which it rebuilds from the tokens (layers
    ``0..l-1`` again, in the same buffer: ``depth (depth + 1) / 2`` more layer passes without
    autograd, recording layer ``l-1``'s segment states on the way, ~15 KB a segment), then runs
    layer ``l`` segment by segment in reverse reading order with autograd, back-propagating into
    the state carried from the segment before, and overwrites one gradient buffer in place. So a step
    holds the tokens, the output, its gradient, the tokens' gradient and the one layer buffer,
    whatever the depth and length. (Mamba draws no random numbers: ``replay`` restores autocast.)
    """

    def __init__(self, encoder: "MambaContextEncoder", by_columns: Optional[torch.Tensor]) -> None:
        self.encoder = encoder
        self.by_columns = by_columns
        self.params = trainable_parameters(encoder)

    def _layer_windows(self, index: int, length: int) -> list[_Window]:
        enc = self.encoder
        order = self.by_columns if self.by_columns is not None and enc._reads_by_columns(index) else None
        return _windows(length, enc.segment_len, enc._reads_backwards(index), order)

    def _layer_in_place(self, index: int, x: torch.Tensor, keep_states: bool = False) -> list[Optional[MixerState]]:
        """Layer ``index`` over ``x`` in place; with ``keep_states``, returns the state each
        segment started from (for that layer's backward)."""
        block = self.encoder.layers[index]
        state: Optional[MixerState] = None
        windows = self._layer_windows(index, x.shape[1])
        seen: list[Optional[MixerState]] = [None] * len(windows) if keep_states else []
        bank: Optional[list[torch.Tensor]] = None
        for i, window in enumerate(windows):
            out, state = block(window.read(x), state, return_state=True)
            window.write(x, out)
            if keep_states and i + 1 < len(windows):
                # Copies (the conv tail is a view of the segment's padded conv input, which a kept
                # view would keep whole: 1.5 MiB a segment), into one bank for all segments: a small
                # block kept per segment, made between the segments' large transient ones, would
                # pin the heap above each (glibc grew by ~3 sequence-sized tensors at 64k tokens).
                if bank is None:
                    bank = [t.new_empty((len(windows) - 1, *t.shape)) for t in state]
                for slot, t in zip(bank, state):
                    slot[i].copy_(t)
                seen[i + 1] = MixerState(*(slot[i] for slot in bank))
        return seen

    def _norm_in_place(self, x: torch.Tensor) -> None:
        for start in range(0, x.shape[1], self.encoder.segment_len):
            window = x[:, start : start + self.encoder.segment_len]
            window.copy_(self.encoder.norm_f(window))

    def run(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens.clone(memory_format=torch.contiguous_format)
        for index in range(len(self.encoder.layers)):
            self._layer_in_place(index, x)
        self._norm_in_place(x)
        return x

    def backward(
        self, tokens: torch.Tensor, grad_out: torch.Tensor, replay: Replay, grads: GradientSum
    ) -> Optional[torch.Tensor]:
        enc, depth, step = self.encoder, len(self.encoder.layers), self.encoder.segment_len
        x = torch.empty_like(tokens, memory_format=torch.contiguous_format)
        grad = torch.empty_like(x)

        def layer_input(index: int) -> list[Optional[MixerState]]:
            """``x`` := layer ``index``'s input; returns the segment states of layer ``index - 1``
            (the last one run), which that layer's backward needs next."""
            seen: list[Optional[MixerState]] = []
            with torch.no_grad(), replay.autocast():  # the activations forward had, half precision too
                x.copy_(tokens)
                for k in range(index):
                    seen = self._layer_in_place(k, x, keep_states=k == index - 1)
            return seen

        pending = layer_input(depth)
        with replay.replaying():
            for start in range(0, x.shape[1], step):
                piece = x[:, start : start + step].detach().requires_grad_()
                found = piece_gradients([enc.norm_f(piece)], [grad_out[:, start : start + step]], [piece, *self.params])
                grad[:, start : start + step] = found[0]
                grads.add(found[1:])
        for index in reversed(range(depth)):
            states, pending = pending, layer_input(index)
            block, carried = enc.layers[index], None
            windows = self._layer_windows(index, x.shape[1])
            with replay.replaying():
                for window, state in reversed(list(zip(windows, states))):
                    piece = window.read(x).detach().requires_grad_()
                    held = None if state is None else MixerState(*(t.detach().requires_grad_() for t in state))
                    out, new_state = block(piece, held, return_state=True)
                    outputs, out_grads = [out], [window.read(grad)]
                    if carried is not None:
                        outputs += list(new_state)
                        out_grads += list(carried)
                    found = piece_gradients(outputs, out_grads, [piece, *(held or (None, None)), *self.params])
                    window.write(grad, found[0])
                    carried = None if held is None else (found[1], found[2])
                    grads.add(found[3:])
        return grad if tokens.requires_grad else None


@CONTEXT_ENCODERS.register("mamba")
class MambaContextEncoder(ContextEncoder):
    """xT's Mamba context encoder: ``depth`` residual Mamba blocks and a final RMSNorm.

    With ``bidirectional`` (xT's choice) every other layer (the 2nd, 4th, ...) reads the
    sequence back to front, so each token eventually sees the whole slide; without it the
    encoder is causal in raster order. ``segment_len`` bounds the working memory and does
    not change the result. On the PyTorch scan every layer runs in place in one buffer
    (:class:`_LayersInPlace`), at inference and, with ``recompute`` under autograd, in training
    on sequences longer than a segment, which then keeps the tokens, the output, the two
    gradients and that buffer, plus one segment's activations; shorter sequences, and
    mamba-ssm's kernel, are checkpointed per layer.

    ``positions``: ``absolute`` or ``normed`` (how the model adds the 2D sin-cos; a scan has
    no attention to rotate, so ``rope2d`` is refused). ``scan``: ``raster`` (every layer reads
    the raster order) or ``alternate``: layer pairs alternate between the raster order and the
    column-major order of the tokens' grid places (layers 0-1 by rows, 2-3 by columns, ...),
    so a token's neighbour below is adjacent in the scan of every other pair instead of a
    grid row away. The column order comes from ``coords``; without them it is the raster order.
    """

    def __init__(
        self,
        dim: int,
        depth: int = 4,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        segment_len: int = 2048,
        bidirectional: bool = True,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        recompute: bool = True,
        positions: str = "absolute",
        scan: str = "raster",
    ) -> None:
        super().__init__()
        if segment_len < 1:
            raise ValueError(f"segment_len must be >= 1, got {segment_len}")
        self.positions = check_positions(positions, ("absolute", "normed"))
        if scan not in ("raster", "alternate"):
            raise ValueError(f"scan must be 'raster' or 'alternate', got {scan!r}")
        self.scan = scan
        self.dim = dim
        self.segment_len = segment_len
        self.recompute = recompute
        self.bidirectional = bidirectional
        self.layers = nn.ModuleList(
            MambaBlock(dim, d_state=d_state, d_conv=d_conv, expand=expand, chunk_size=chunk_size) for _ in range(depth)
        )
        self.norm_f = RMSNorm(dim, eps=NORM_EPS)
        self._rescale_residual_outputs(depth)

    @torch.no_grad()
    def _rescale_residual_outputs(self, depth: int) -> None:
        """Scale each block's output projection by 1/sqrt(depth) (GPT-2 / mamba-ssm style)
        so the residual stream's variance at init does not grow with depth."""
        for layer in self.layers:
            layer.mixer.out_proj.weight.div_(math.sqrt(max(depth, 1)))

    def _reads_backwards(self, index: int) -> bool:
        return self.bidirectional and index % 2 == 1

    def _reads_by_columns(self, index: int) -> bool:
        return self.scan == "alternate" and (index // 2) % 2 == 1

    def forward(self, tokens: torch.Tensor, coords: Optional[torch.Tensor] = None) -> torch.Tensor:
        recompute = recomputing(self, tokens)
        by_columns = None
        if self.scan == "alternate" and coords is not None and len(self.layers) > 2 and tokens.shape[1]:
            by_columns = column_major_order(check_coords(coords, tokens.shape[1], tokens.device))
        if tokens.shape[1] and not fused_scan_available(tokens):
            # The one-node pass rebuilds layer inputs in backward (~1.6x the training time of the
            # context encoder at depth 4): worth it for sequences longer than a segment, where it
            # keeps memory flat; a shorter one is checkpointed per layer, as small and faster.
            if recompute and tokens.shape[1] > self.segment_len:
                return recomputed_pass(_LayersInPlace(self, by_columns), tokens)
            if not torch.is_grad_enabled():  # inference: every layer in place in one buffer
                return _LayersInPlace(self, by_columns).run(tokens)
        x = tokens
        for index, layer in enumerate(self.layers):
            backwards = self._reads_backwards(index)
            transposed = by_columns is not None and self._reads_by_columns(index)
            if transposed:
                x = x[:, by_columns]
            if backwards:
                x = x.flip(1)
            x = _stream_through(layer, x, self.segment_len, recompute)
            if backwards:
                x = x.flip(1)
            if transposed:
                x = torch.empty_like(x).index_copy_(1, by_columns, x)
        return self.norm_f(x)


def column_major_order(coords: torch.Tensor) -> torch.Tensor:
    """Indices that list the tokens by grid column, then row (the transposed raster order)."""
    rows, cols = coords[:, 0].long(), coords[:, 1].long()
    key = (cols - cols.min()) * (int(rows.max() - rows.min()) + 1) + (rows - rows.min())
    return torch.argsort(key, stable=True)
