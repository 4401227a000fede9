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
import math
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from xt_core.models.context.recompute import records_grad

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
#
# Within a chunk of T steps the recurrence has a closed form. With the log decays
# ``a_s = delta_s * A`` summed from the chunk's second step, ``rel_t = a_1 + ... + a_t``
# (``rel_0 = 0``), the states of the chunk are
#
#     h_t = exp(rel_t) * P_t,   P_t = exp(a_0) * h_in + cumsum_{s<=t} exp(-rel_s) * delta_s u_s B_s
#
# where ``h_in`` is the state entering the chunk. One exp, one reciprocal, one cumsum and a
# few products per (channel, state, step): O(L) work like the sequential loop, but as tensor
# operations over whole chunks instead of one Python step per token. Only the chunk-end
# states are carried sequentially, one small step per chunk. The gradient has the same
# form run backwards in time (see ``_group_backward``).
#
# exp(rel) and exp(-rel) must stay in floating-point range, so a chunk is as long as its
# decays allow: ``|rel|`` is kept under ``_EXPONENT_LIMIT`` by choosing, for each group of
# chunks, the longest chunk length (``chunk_size``, its halves, ..., 1) that keeps it there.
# Strong decays shorten the chunks (down to the sequential loop at length 1) instead of
# overflowing; the result is the same either way. Every exponent is a sum over the chunk's
# own steps up to ``t``, so an output does not depend on later steps' arithmetic.

#: The largest |exponent| of a chunk's factorised decays, per compute dtype. exp(40) = 2e17
#: leaves products with the drive and with gradients far below float32's 3e38; rounding an
#: exponent of 40 to float32 costs up to ~2e-6 relative, of 300 to float64 ~3e-14.
_EXPONENT_LIMIT = {torch.float32: 40.0, torch.float64: 300.0}

#: Bytes of one (batch, d_inner, d_state, group) working tensor: a group of tokens is scanned
#: at once and its few working tensors then stay near the CPU's L2 cache; fewer, larger
#: groups spend the time in memory traffic, more, smaller ones in Python overhead.
_GROUP_BYTES = 4 << 20

_LN_2 = math.log(2.0)
_LOG2_E = 1.0 / _LN_2


def _group_length(batch: int, d_inner: int, d_state: int, itemsize: int, chunk_size: int, length: int) -> int:
    """Tokens per group: a multiple of ``chunk_size``, about ``_GROUP_BYTES`` per working tensor."""
    per_token = max(1, batch * d_inner * d_state * itemsize)
    group = chunk_size
    while 2 * group * per_token <= _GROUP_BYTES and group < length:
        group *= 2
    return group


def _chunk_candidates(chunk_size: int) -> list[int]:
    """``chunk_size`` and its successive halves while even, then 1: all divide ``chunk_size``."""
    sizes = [chunk_size]
    while sizes[-1] % 2 == 0:
        sizes.append(sizes[-1] // 2)
    return sizes if sizes[-1] == 1 else sizes + [1]


def _chunk_plan(step: torch.Tensor, A: torch.Tensor, chunk_size: int, group: int) -> list[int]:
    """The chunk length for each group of ``group`` steps (``step`` time-major ``(L, b, d)``,
    padded to whole groups).

    A chunk's exponents are its log decays summed from its second step on (the first
    only scales the state carried in), so they reach at most the sum of ``|log decay|``
    over steps 2..T. The bound takes, per step, the largest ``|delta| * max|A|`` over batch
    and channels: cheap, and never below the true reach. The backward pass runs the same
    chunks in reverse, whose exponents span the same steps.
    """
    limit = _EXPONENT_LIMIT.get(step.dtype, _EXPONENT_LIMIT[torch.float32])
    per_step = (step.abs() * A.abs().amax(dim=1)).amax(dim=(1, 2))  # (L,)
    groups = per_step.shape[0] // group
    plan = torch.ones(groups, dtype=torch.long, device=step.device)
    for size in sorted(_chunk_candidates(chunk_size))[1:]:  # ascending: longer wins
        reach = per_step.view(-1, size)[:, 1:].sum(-1)
        fits = reach.view(groups, group // size).amax(dim=1) <= limit
        plan = torch.where(fits, size, plan)
    return plan.tolist()


def _prefix_sums(
    x: torch.Tensor,
    step: torch.Tensor,
    A_bits: torch.Tensor,
    B: torch.Tensor,
    state: torch.Tensor,
    work: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward closed form of one group up to the states: ``(E, P, gain, injected, last)``.

    Time-major inputs: ``x = delta * u`` and ``step`` ``(c, T, b, d)``, ``B`` ``(c, T, b, n)``;
    ``A_bits`` is ``A`` transposed to ``(n, d)`` and scaled to base 2, ``state`` ``(b, n, d)``.
    ``E = exp(rel)`` and ``P`` (the bracket, state carried in included; ``h = E * P``) are
    ``(c, T, b, n, d)`` views of ``work[0]`` and ``work[1]``; ``gain`` is each chunk's
    first-step decay and ``injected`` the carried state's share ``exp(a_0) h_in``, both
    ``(c, b, n, d)``; ``last`` is the state leaving the group.
    """
    chunks, chunk, batch, d_inner = x.shape
    shape = (chunks, chunk, batch, A_bits.shape[0], d_inner)
    rel = (step.cumsum(1) - step[:, :1]).unsqueeze(3)  # (c, T, b, 1, d): summed steps 2..t
    # exp2 of the exponent in bits: several times faster than exp on CPUs (a different
    # vectorised kernel), at the cost of one more rounding of the exponent.
    decay = torch.mul(rel, A_bits, out=work[0].view(shape)).exp2_()
    gain = torch.exp2(step[:, 0].unsqueeze(2) * A_bits)
    drive = torch.reciprocal(decay, out=work[1].view(shape))
    drive.mul_(x.unsqueeze(3)).mul_(B.unsqueeze(4))
    sums, ends = drive.sum(1), decay[:, -1]
    injected = torch.empty_like(gain)
    for k in range(chunks):
        torch.mul(gain[k], state, out=injected[k])
        state = (sums[k] + injected[k]).mul_(ends[k])
    drive[:, 0].add_(injected)
    for t in range(1, chunk):
        drive[:, t].add_(drive[:, t - 1])
    return decay, drive, gain, injected, state


def _group_forward(
    x: torch.Tensor, step: torch.Tensor, A_bits: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    state: torch.Tensor, work: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``y = <C_t, h_t>`` of one group, time-major ``(c, T, b, d)``, and the state leaving it."""
    decay, prefix, _, _, state = _prefix_sums(x, step, A_bits, B, state, work)
    return prefix.mul_(decay).mul_(C.unsqueeze(4)).sum(3), state


def _group_backward(
    x: torch.Tensor,
    step: torch.Tensor,
    A_bits: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor,
    grad_y: torch.Tensor,
    adjoint_next: torch.Tensor,
    gain_next: torch.Tensor,
    work: list[torch.Tensor],
) -> tuple[torch.Tensor, ...]:
    """Gradients of one group (time-major, as :func:`_prefix_sums`), from its recomputed
    states and the adjoint carried back from the group after it.

    The adjoint ``lam_t = dL/dh_t`` obeys ``lam_t = gy_t C_t + a_{t+1} lam_{t+1}``: the
    forward recurrence backwards in time, so within a chunk ``lam_t = exp(-rel_t) R_t``
    with ``R_t = sum_{s>=t} exp(rel_s) gy_s C_s`` (plus the next chunk's adjoint, carried in
    at the chunk's end). Then ``dL/db_t = lam_t`` gives the ``x`` and ``B`` gradients,
    ``dL/dC_t = sum_d gy_t h_t``, and the gradient of the log decay ``a_t`` is
    ``lam_t a_t h_{t-1} = R_t P_{t-1}`` (the exponentials cancel), which gives those of
    ``delta`` (through the decays) and ``A``.

    ``adjoint_next`` is ``lam`` at the next group's first step and ``gain_next`` that step's
    decay (the last state's gradient and 1 after the sequence), both ``(b, n, d)``. Returns
    ``(grad_x, grad_step, grad_A, grad_B, grad_C, lam at this group's first step, that
    step's decay)``, time-major, ``grad_A`` as ``(n, d)``.
    """
    chunks, chunk, batch, d_inner = x.shape
    shape = (chunks, chunk, batch, A_bits.shape[0], d_inner)
    decay, prefix, gain, injected, _ = _prefix_sums(x, step, A_bits, B, state, work)
    gy = grad_y.unsqueeze(3)

    source = torch.mul(decay, gy, out=work[2].view(shape)).mul_(C.unsqueeze(4))
    sums, ends = source.sum(1), decay[:, -1]
    carried_in = torch.empty_like(sums)
    adjoint, next_decay = adjoint_next, gain_next
    for k in reversed(range(chunks)):
        torch.mul(ends[k], next_decay, out=carried_in[k]).mul_(adjoint)
        adjoint, next_decay = sums[k] + carried_in[k], gain[k]  # lam at chunk k's first step
    source[:, -1].add_(carried_in)
    for t in reversed(range(chunk - 1)):
        source[:, t].add_(source[:, t + 1])
    rev = source  # R_t

    # dL/dC_t = sum_d gy_t h_t with h = E * P, then P's buffer is free.
    products = work[3].view(shape)
    torch.mul(rev[:, 1:], prefix[:, :-1], out=products[:, 1:])  # R_t P_{t-1}: dL/d(log decay)
    torch.mul(rev[:, 0], injected, out=products[:, 0])
    grad_C = prefix.mul_(decay).mul_(gy).sum(4)
    grad_step = torch.mul(products, A_bits, out=prefix).sum(3).mul_(_LN_2)  # sum_n A (...); A = A_bits ln 2
    grad_A = products.mul_(step.unsqueeze(3)).sum((0, 1, 2))  # (n, d)

    adjoint_t = rev.mul_(torch.reciprocal(decay, out=prefix))  # lam_t = exp(-rel_t) R_t
    grad_x = torch.mul(adjoint_t, B.unsqueeze(4), out=decay).sum(3)
    grad_B = torch.mul(adjoint_t, x.unsqueeze(3), out=decay).sum(4)
    return grad_x, grad_step, grad_A, grad_B, grad_C, adjoint, next_decay


def _new_work(batch: int, d_inner: int, d_state: int, group: int, like: torch.Tensor, count: int) -> list[torch.Tensor]:
    return [like.new_empty(group, batch, d_state, d_inner) for _ in range(count)]


def _time_major(t: torch.Tensor) -> torch.Tensor:
    """``(b, ch, L)`` -> contiguous ``(L, b, ch)``: time outermost, channels innermost.

    In this layout a group of chunks is a free view ``(c, T, b, ch)``, every broadcast runs
    along contiguous rows, sums over time or state are over outer dimensions, and a
    cumulative sum over a chunk is ``T - 1`` additions of whole ``(c, b, n, d)`` slabs: all
    vectorised, where a cumsum along short innermost rows is not. Mamba's ``delta``, ``z``,
    ``B`` and ``C`` are views of time-major projections already (free here); the conv
    output ``u`` is transposed per batch element (a 2-D transpose is several times faster
    than a general permuted copy).
    """
    moved = t.permute(2, 0, 1)
    if moved.is_contiguous():
        return moved
    out = t.new_empty(moved.shape)
    for i in range(t.shape[0]):
        out[:, i] = t[i].t()
    return out


def _pad_time(t: torch.Tensor, pad: int) -> torch.Tensor:
    return torch.cat([t, t.new_zeros(pad, *t.shape[1:])]) if pad else t


def _scan_groups(
    x: torch.Tensor,
    step: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor,
    plan: list[int],
    group: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every group in order, time-major in and out: ``(y, last state, state entering each group)``
    (states ``(b, n, d)``; the entering ones are kept for the backward pass)."""
    length, batch, d_inner = x.shape
    A_bits = (A.t() * _LOG2_E).contiguous()
    work = _new_work(batch, d_inner, A.shape[1], group, x, 2)
    y = torch.empty_like(x)
    entering = []
    for k, chunk in enumerate(plan):
        window, chunks = slice(k * group, (k + 1) * group), group // chunk
        entering.append(state)
        x_k, step_k, B_k, C_k = (t[window].view(chunks, chunk, batch, -1) for t in (x, step, B, C))
        y_k, state = _group_forward(x_k, step_k, A_bits, B_k, C_k, state, work)
        y[window] = y_k.view(group, batch, d_inner)
    return y, state, torch.stack(entering)


class _ChunkedScan(torch.autograd.Function):
    """The group scan (time-major tensors, state ``(b, n, d)``) with a recomputing backward.

    Autograd through the scan would keep every group's ``(d_inner, d_state)`` tensors per
    token (tens of KiB a token). Here forward keeps only its inputs and the state entering
    each group; backward goes through the groups in reverse, recomputes one group's states
    and carries the adjoint to the group before.
    """

    @staticmethod
    def forward(ctx, x, step, A, B, C, state, plan, group):  # noqa: D102 (autograd API)
        y, last, entering = _scan_groups(x, step, A, B, C, state, plan, group)
        ctx.save_for_backward(x, step, A, B, C, entering)
        ctx.plan, ctx.group = plan, group
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_last):  # noqa: D102 (autograd API)
        x, step, A, B, C, entering = ctx.saved_tensors
        group = ctx.group
        _, batch, d_inner = x.shape
        A_bits = (A.t() * _LOG2_E).contiguous()
        grads = [torch.empty_like(t) for t in (x, step, B, C)]
        grad_A = torch.zeros_like(A_bits)
        work = _new_work(batch, d_inner, A.shape[1], group, x, 4)
        adjoint, next_decay = grad_last.contiguous(), torch.ones_like(grad_last)
        for k in reversed(range(len(ctx.plan))):
            window, chunk = slice(k * group, (k + 1) * group), ctx.plan[k]
            x_k, step_k, B_k, C_k, gy_k = (t[window].view(group // chunk, chunk, batch, -1)
                                           for t in (x, step, B, C, grad_y))  # fmt: skip
            parts = _group_backward(x_k, step_k, A_bits, B_k, C_k, entering[k], gy_k, adjoint, next_decay, work)
            for total, part in zip(grads, (parts[0], parts[1], parts[3], parts[4])):
                total[window] = part.view(group, batch, -1)
            grad_A += parts[2]
            adjoint, next_decay = parts[5], parts[6]
        grad_x, grad_step, grad_B, grad_C = grads
        return grad_x, grad_step, grad_A.t(), grad_B, grad_C, next_decay * adjoint, None, None


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
    """The selective scan chunk by chunk, in closed form inside a chunk, state carried between.

    ``chunk_size`` is the longest chunk; chunks shrink where decays are strong (see the
    section comment). Working memory is a few ``(batch, d_inner, d_state, group)`` tensors
    whatever ``L`` is; under autograd the scan keeps its ``(batch, d_inner | d_state, L)``
    inputs and one state per group, and its backward pass recomputes the states. Same
    arguments and results as :func:`selective_scan_reference` (``y`` may come back as a
    non-contiguous view: the scan works time-major).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    _check_shapes(u, delta, A, B, C, initial_state)
    out_dtype, dtype = u.dtype, _compute_dtype(u.dtype)
    batch, d_inner, length = u.shape
    d_state = A.shape[1]
    A = A.to(dtype)
    state = u.new_zeros(batch, d_inner, d_state, dtype=dtype) if initial_state is None else initial_state.to(dtype)
    if length == 0:
        return _result(u.new_zeros(batch, d_inner, 0), state, return_last_state)

    u_t, delta_t, B_t, C_t = (_time_major(t.to(dtype)) for t in (u, delta, B, C))
    step = delta_t if delta_bias is None else delta_t + delta_bias.to(dtype)
    step = F.softplus(step) if delta_softplus else step
    group = _group_length(batch, d_inner, d_state, u_t.element_size(), chunk_size, length)
    pad = (-length) % group
    # Padded steps have delta = 0 and no drive: decay 1, nothing added, the state unchanged.
    x, step, B_t, C_t = (_pad_time(t, pad) for t in (step * u_t, step, B_t, C_t))
    plan = _chunk_plan(step.detach(), A.detach(), chunk_size, group)
    tensors = (x, step, A, B_t, C_t, state.transpose(1, 2).contiguous())
    if records_grad(*tensors):
        y, last = _ChunkedScan.apply(*tensors, plan, group)
    else:
        y, last, _ = _scan_groups(*tensors, plan, group)
    y = y[:length]
    if D is not None:
        y = y + u_t * D.to(dtype)
    if z is not None:
        y = y * F.silu(_time_major(z.to(dtype)))
    return _result(y.to(out_dtype).permute(1, 2, 0), last.transpose(1, 2), return_last_state)


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
