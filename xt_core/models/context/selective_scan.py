"""The selective scan of Mamba (S6), in plain PyTorch, with mamba-ssm's calling convention.

The recurrence, per batch ``b``, channel ``d`` and state ``n`` (Gu & Dao 2023, eq. 2a with
the zero-order-hold discretisation of ``A`` and the simplified Euler one of ``B``)::

    delta_t = softplus(delta_t + delta_bias)           (both optional)
    h_t     = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t     = <C_t, h_t> + D * u_t
    out_t   = y_t * silu(z_t)                          (optional gate)

Shapes follow ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` so the
functions here and that kernel are interchangeable:

* ``u``, ``delta``, ``z``: ``(batch, d_inner, L)``
* ``A``: ``(d_inner, d_state)``
* ``B``, ``C``: ``(batch, d_state, L)``. Only this input-dependent ("variable B/C") form
  is supported: it is the one Mamba uses; the time-invariant and grouped forms are not.
* ``D``, ``delta_bias``: ``(d_inner,)``
* ``initial_state`` and the returned last state: ``(batch, d_inner, d_state)``.

Arithmetic runs in at least float32 (half inputs are promoted, float64 stays float64);
``y`` comes back in ``u``'s dtype, the last state in the compute dtype.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

ScanResult = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]

DEFAULT_CHUNK_SIZE = 64

# Input dtypes the mamba-ssm CUDA kernel is built for.
_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------- helpers


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half precision is too coarse for a long product of decays; never go below float32."""
    return torch.promote_types(dtype, torch.float32)


def _check_shapes(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: Optional[torch.Tensor],
) -> None:
    """Fail loudly on the shapes we do not support (e.g. a time-invariant 2-D ``B``)."""
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must be (batch, d_inner, L), got {tuple(u.shape)}, {tuple(delta.shape)}")
    batch, d_inner, length = u.shape
    if A.dim() != 2 or A.shape[0] != d_inner:
        raise ValueError(f"A must be (d_inner={d_inner}, d_state), got {tuple(A.shape)}")
    d_state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != (batch, d_state, length):
            raise ValueError(
                f"{name} must be (batch, d_state, L) = {(batch, d_state, length)} "
                f"(only input-dependent B/C are supported), got {tuple(t.shape)}"
            )
    if initial_state is not None and tuple(initial_state.shape) != (batch, d_inner, d_state):
        raise ValueError(f"initial_state must be {(batch, d_inner, d_state)}, got {tuple(initial_state.shape)}")


def _discretisation_step(
    delta: torch.Tensor, delta_bias: Optional[torch.Tensor], delta_softplus: bool, dtype: torch.dtype
) -> torch.Tensor:
    """The positive step size: Mamba learns it through a bias and a softplus."""
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _skip_and_gate(
    y: torch.Tensor,
    u: torch.Tensor,
    D: Optional[torch.Tensor],
    z: Optional[torch.Tensor],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """The parts of the output that do not go through the state: ``D`` skip, then silu gate."""
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


def _result(y: torch.Tensor, last_state: torch.Tensor, return_last_state: bool) -> ScanResult:
    return (y, last_state) if return_last_state else y


# --------------------------------------------------------------------------- reference


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    initial_state: Optional[torch.Tensor] = None,
    return_last_state: bool = False,
) -> ScanResult:
    """One time step at a time: slow, but each line is the recurrence itself.

    This is the ground truth the chunked scan is tested against; do not optimise it.
    """
    _check_shapes(u, delta, A, B, C, initial_state)
    out_dtype, dtype = u.dtype, _compute_dtype(u.dtype)
    batch, d_inner, length = u.shape
    u, A, B, C = u.to(dtype), A.to(dtype), B.to(dtype), C.to(dtype)
    delta = _discretisation_step(delta, delta_bias, delta_softplus, dtype)

    if initial_state is None:
        state = u.new_zeros(batch, d_inner, A.shape[1])
    else:
        state = initial_state.to(dtype)
    outputs = []
    for t in range(length):
        decay = torch.exp(delta[:, :, t, None] * A)  # (batch, d_inner, d_state)
        drive = (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        state = decay * state + drive
        outputs.append(torch.einsum("bdn,bn->bd", state, C[:, :, t]))
    y = torch.stack(outputs, dim=-1) if outputs else u.new_zeros(batch, d_inner, 0)
    return _result(_skip_and_gate(y, u, D, z, out_dtype), state, return_last_state)


# --------------------------------------------------------------------------- chunked


def _shift_in_time(x: torch.Tensor, offset: int, fill: float) -> torch.Tensor:
    """``x`` delayed by ``offset`` steps along time (dim -2), the gap filled with ``fill``."""
    return F.pad(x[..., :-offset, :], (0, 0, offset, 0), value=fill)


def _doubling_scan(decay: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
    """All states ``h_t = decay_t * h_{t-1} + drive_t`` (``h_{-1} = 0``) of one chunk at once.

    A Hillis-Steele scan on the pairs ``(decay, drive)``: after the round with offset ``k``
    each position holds the composition of the last ``2k`` steps, so ``ceil(log2 T)``
    rounds of elementwise work replace ``T`` sequential steps. Decays are only ever
    multiplied together (cumulative products of numbers in ``(0, 1]`` when ``delta >= 0``
    and ``A < 0``), never divided, so nothing overflows however long the chunk; they
    underflow to zero, which is the correct limit. Time is dim -2, state dim -1.
    """
    length = decay.shape[-2]
    offset = 1
    while offset < length:
        drive = drive + decay * _shift_in_time(drive, offset, 0.0)
        if 2 * offset < length:  # the last round does not need the combined decays
            decay = decay * _shift_in_time(decay, offset, 1.0)
        offset *= 2
    return drive


def _scan_chunk(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    state: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """States of one chunk in parallel; the state carried in enters through the first step.

    Working memory is a few ``(batch, d_inner, chunk, d_state)`` tensors per scan round.
    """
    decay = torch.exp(delta.unsqueeze(-1) * A[:, None, :])  # (b, d, T, n)
    drive = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)  # (b, d, T, n)
    if state is not None:
        # h_0 = decay_0 * h_in + drive_0: fold the carried state into the first drive.
        first = drive[:, :, :1] + decay[:, :, :1] * state.unsqueeze(2)
        drive = torch.cat([first, drive[:, :, 1:]], dim=2)
    states = _doubling_scan(decay, drive)
    y = torch.einsum("bdtn,btn->bdt", states, C.transpose(1, 2))
    return y, states[:, :, -1]


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    initial_state: Optional[torch.Tensor] = None,
    return_last_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> ScanResult:
    """The selective scan chunk by chunk: parallel inside a chunk, state carried between.

    The ``(d_inner, d_state)`` state per token is what makes a whole-sequence parallel
    scan expensive; materialising it only one chunk at a time keeps working memory at
    ``O(batch * d_inner * d_state * chunk_size * log2(chunk_size))`` whatever ``L`` is.
    (Under autograd the saved activations still grow with ``L``, as for any scan that
    does not recompute.) Same arguments and results as :func:`selective_scan_reference`.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    _check_shapes(u, delta, A, B, C, initial_state)
    out_dtype, dtype = u.dtype, _compute_dtype(u.dtype)
    batch, d_inner, length = u.shape
    u, A, B, C = u.to(dtype), A.to(dtype), B.to(dtype), C.to(dtype)
    delta = _discretisation_step(delta, delta_bias, delta_softplus, dtype)

    state = None if initial_state is None else initial_state.to(dtype)
    outputs = []
    for start in range(0, length, chunk_size):
        window = slice(start, start + chunk_size)
        y_chunk, state = _scan_chunk(u[..., window], delta[..., window], A, B[..., window], C[..., window], state)
        outputs.append(y_chunk)
    if state is None:  # empty sequence: nothing ran
        state = u.new_zeros(batch, d_inner, A.shape[1])
    y = torch.cat(outputs, dim=-1) if outputs else u.new_zeros(batch, d_inner, 0)
    return _result(_skip_and_gate(y, u, D, z, out_dtype), state, return_last_state)


# --------------------------------------------------------------------------- dispatcher


@functools.lru_cache(maxsize=None)
def _fused_selective_scan_fn() -> Optional[Callable[..., ScanResult]]:
    """mamba-ssm's CUDA kernel if it is installed; looked up once, optional by design."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a build that fails to load its extension
        return None
    return selective_scan_fn


def fused_scan_available(u: torch.Tensor) -> bool:
    """Whether mamba-ssm's CUDA kernel can take a scan whose input is ``u``."""
    return u.is_cuda and u.dtype in _FUSED_DTYPES and _fused_selective_scan_fn() is not None


def _last_state_needs_grad(return_last_state: bool, tensors: tuple[Optional[torch.Tensor], ...]) -> bool:
    """mamba-ssm's kernel returns its last state without a backward through it; when that
    state feeds later segments in training, using the kernel would silently drop gradients."""
    if not (return_last_state and torch.is_grad_enabled()):
        return False
    return any(t is not None and t.requires_grad for t in tensors)


def _initial_state_response(
    delta: torch.Tensor,
    A: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What a carried-in state alone adds to ``y`` and to the last state.

    The recurrence is linear in ``h_{-1}``, so its share is ``C_t . (prod_{s<=t} decay_s) h_{-1}``.
    ``delta`` is the processed (biased, softplus'd) step in the compute dtype. The
    cumulative log decay is ``<= 0`` for ``delta >= 0, A < 0``, so ``exp`` of it is safe;
    chunks only bound memory, the carried product links them.
    """
    dtype = delta.dtype
    A, C, carried = A.to(dtype), C.to(dtype), initial_state.to(dtype)
    outputs = []
    for start in range(0, delta.shape[-1], chunk_size):
        window = slice(start, start + chunk_size)
        log_decay = torch.cumsum(delta[..., window].unsqueeze(-1) * A[:, None, :], dim=2)  # (b, d, T, n)
        states = torch.exp(log_decay) * carried.unsqueeze(2)
        outputs.append(torch.einsum("bdtn,btn->bdt", states, C[..., window].transpose(1, 2)))
        carried = states[:, :, -1]
    y = torch.cat(outputs, dim=-1) if outputs else delta.new_zeros(delta.shape)
    return y, carried


def _scan_with_initial_state(
    zero_state_scan: Callable[..., ScanResult],
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],
    z: Optional[torch.Tensor],
    delta_bias: Optional[torch.Tensor],
    delta_softplus: bool,
    initial_state: torch.Tensor,
    return_last_state: bool,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> ScanResult:
    """Give a scan that starts from zero (mamba-ssm's kernel) a carried-in state.

    By linearity: run the fast scan from zero, then add the initial state's response,
    gated like the rest. Lets streamed segments after the first stay on the fused kernel.
    """
    _check_shapes(u, delta, A, B, C, initial_state)
    y, last_state = zero_state_scan(
        u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus, return_last_state=True
    )
    dtype = _compute_dtype(u.dtype)
    step = _discretisation_step(delta, delta_bias, delta_softplus, dtype)
    response, carried = _initial_state_response(step, A, C, initial_state, chunk_size)
    if z is not None:
        response = response * F.silu(z.to(dtype))
    y = (y.to(dtype) + response).to(u.dtype)
    return _result(y, last_state.to(dtype) + carried, return_last_state)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    initial_state: Optional[torch.Tensor] = None,
    return_last_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> ScanResult:
    """The fastest correct scan for these tensors.

    mamba-ssm's fused CUDA kernel when it imports and ``u`` is a CUDA float32/16/bf16
    tensor (it has no ``initial_state`` argument, so a carried state is added by
    linearity); otherwise :func:`selective_scan_chunked`. The kernel is also skipped
    when the returned last state must carry gradients, which it cannot. ``chunk_size``
    only affects the PyTorch paths.
    """
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    if not fused_scan_available(u) or _last_state_needs_grad(return_last_state, tensors):
        return selective_scan_chunked(
            u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
            initial_state=initial_state, return_last_state=return_last_state, chunk_size=chunk_size,
        )  # fmt: skip
    fused = _fused_selective_scan_fn()
    if initial_state is None:
        return fused(
            u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
            return_last_state=return_last_state,
        )  # fmt: skip
    return _scan_with_initial_state(
        fused, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_last_state, chunk_size
    )
