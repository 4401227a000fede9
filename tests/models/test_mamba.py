"""The pure-PyTorch Mamba: the chunked scan against the sequential reference, streaming
against one pass, the encoder's direction of information flow, and the mamba-ssm
parameter contract."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from xt_core.models.context import CONTEXT_ENCODERS, create_context_encoder
from xt_core.models.context import selective_scan as scan_module
from xt_core.models.context.mamba import MambaBlock, MambaContextEncoder, MambaMixer, RMSNorm
from xt_core.models.context.selective_scan import (
    _scan_with_initial_state,
    selective_scan,
    selective_scan_chunked,
    selective_scan_reference,
)

# The mamba-ssm ``Mamba`` module's state dict: the contract for moving weights across.
MAMBA_SSM_PARAMETER_NAMES = [
    "in_proj.weight",
    "conv1d.weight",
    "conv1d.bias",
    "x_proj.weight",
    "dt_proj.weight",
    "dt_proj.bias",
    "A_log",
    "D",
    "out_proj.weight",
]

TOLERANCE = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}

BATCH, D_INNER, D_STATE = 2, 3, 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: intra-op threads cost more than they save (~4x slower
    on a loaded 2-core machine). Restored afterwards for the other test modules."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _scan_inputs(length: int, dtype: torch.dtype, seed: int = 0, full: bool = True) -> dict[str, torch.Tensor]:
    """Random scan arguments (mamba-ssm shapes), leaves requiring grad."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    args = dict(
        u=rand(BATCH, D_INNER, length),
        delta=rand(BATCH, D_INNER, length, scale=0.5),
        A=-torch.exp(rand(D_INNER, D_STATE, scale=0.5)),
        B=rand(BATCH, D_STATE, length),
        C=rand(BATCH, D_STATE, length),
    )
    if full:
        args.update(
            D=rand(D_INNER),
            z=rand(BATCH, D_INNER, length),
            delta_bias=rand(D_INNER, scale=0.5),
            initial_state=rand(BATCH, D_INNER, D_STATE),
        )
    return {k: v.requires_grad_() for k, v in args.items()}


def _outputs_and_grads(scan, inputs: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
    """y, last state, and the gradient of a generic loss of both w.r.t. every input."""
    y, last = scan(**inputs, delta_softplus=True, return_last_state=True, **kwargs)
    weights = torch.linspace(-1.0, 1.0, y.numel(), dtype=y.dtype).reshape(y.shape)
    loss = (y * weights).sum() + (last**2).sum()
    grads = torch.autograd.grad(loss, list(inputs.values()))
    results = {"y": y, "last_state": last}
    results.update({f"grad_{name}": grad for name, grad in zip(inputs, grads)})
    return results


def _assert_all_close(actual: dict, expected: dict, dtype: torch.dtype) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], **TOLERANCE[dtype], msg=lambda m: f"{name}: {m}")


# --------------------------------------------------------------------------- selective scan


def test_reference_scan_is_the_recurrence_written_out():
    """Scalar arithmetic over every index, independent of the tensor code both scans share."""
    inputs = {k: v.detach() for k, v in _scan_inputs(3, torch.float64, seed=7).items()}
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
    u, delta, A, B, C, D, z, bias, h0 = (inputs[k] for k in names)
    expected = torch.empty_like(u)
    for b in range(BATCH):
        for d in range(D_INNER):
            h = [h0[b, d, n].item() for n in range(D_STATE)]
            for t in range(u.shape[-1]):
                step = math.log1p(math.exp(delta[b, d, t].item() + bias[d].item()))
                h = [
                    math.exp(step * A[d, n].item()) * h[n] + step * B[b, n, t].item() * u[b, d, t].item()
                    for n in range(D_STATE)
                ]
                y = sum(C[b, n, t].item() * h[n] for n in range(D_STATE)) + D[d].item() * u[b, d, t].item()
                gate = z[b, d, t].item() / (1 + math.exp(-z[b, d, t].item()))
                expected[b, d, t] = y * gate
    actual = selective_scan_reference(**inputs, delta_softplus=True)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("length,chunk_size", [(1, 4), (1, 128), (5, 4), (16, 16), (37, 8), (100, 32), (130, 64)])
def test_chunked_scan_matches_reference_forward_and_backward(dtype, length, chunk_size):
    inputs = _scan_inputs(length, dtype)
    expected = _outputs_and_grads(selective_scan_reference, inputs)
    actual = _outputs_and_grads(selective_scan_chunked, inputs, chunk_size=chunk_size)
    _assert_all_close(actual, expected, dtype)


@pytest.fixture
def small_groups(monkeypatch):
    """One chunk per group, so that the tiny test tensors span many groups (the plan, the
    carried state and the backward pass's group-by-group recomputation all come into play)."""
    monkeypatch.setattr(scan_module, "_GROUP_BYTES", 1)


OPTIONAL = ("D", "z", "delta_bias", "initial_state")


@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize("present", list(itertools.product([False, True], repeat=len(OPTIONAL))))
def test_chunked_scan_equals_reference_to_1e10_with_any_optional_arguments(small_groups, present, softplus):
    inputs = _scan_inputs(45, torch.float64, seed=11)
    inputs = {k: v for k, v in inputs.items() if k not in OPTIONAL or present[OPTIONAL.index(k)]}

    def run(scan, **kwargs):
        y, last = scan(**inputs, delta_softplus=softplus, return_last_state=True, **kwargs)
        weights = torch.linspace(-1.0, 1.0, y.numel(), dtype=y.dtype).reshape(y.shape)
        grads = torch.autograd.grad((y * weights).sum() + last.square().sum(), list(inputs.values()))
        return {"y": y, "last_state": last, **{f"grad_{k}": g for k, g in zip(inputs, grads)}}

    _assert_all_close(run(selective_scan_chunked, chunk_size=8), run(selective_scan_reference), torch.float64)


def test_chunked_scan_gradcheck_across_groups(small_groups):
    inputs = _scan_inputs(19, torch.float64, seed=12)
    names = list(inputs)

    def scan(*tensors):
        return selective_scan_chunked(**dict(zip(names, tensors)), delta_softplus=True, return_last_state=True,
                                      chunk_size=4)  # fmt: skip

    assert torch.autograd.gradcheck(scan, tuple(inputs.values()), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_chunk_plan_shortens_chunks_only_where_decays_are_strong(small_groups):
    """Weak decays in the first half, strong in the second: long chunks then short ones,
    each within the exponent limit, and the result still the recurrence's."""
    inputs = _scan_inputs(64, torch.float64, full=False, seed=13)
    with torch.no_grad():
        inputs["delta"][..., :32] = 0.01
        inputs["delta"][..., 32:] = 12.0  # 16 steps of up to 12 * max|A| pass the float64 limit of 300
    time_major = inputs["delta"].detach().permute(2, 0, 1)  # (L, batch, d_inner), as the scan holds it
    plan = scan_module._chunk_plan(time_major, inputs["A"].detach(), 16, 16)
    assert plan[:2] == [16, 16] and all(size < 16 for size in plan[2:]), plan
    limit = scan_module._EXPONENT_LIMIT[torch.float64]
    steps = (inputs["delta"].detach() * inputs["A"].detach().abs().amax(1)[:, None]).amax(dim=(0, 1))
    for k, size in enumerate(plan):
        reach = steps[16 * k : 16 * (k + 1)].view(-1, size)[:, 1:].sum(-1).max()
        assert reach <= limit or size == 1
    expected = _outputs_and_grads(selective_scan_reference, inputs)
    _assert_all_close(_outputs_and_grads(selective_scan_chunked, inputs, chunk_size=16), expected, torch.float64)


def _saved_bytes_per_token(d_inner: int, d_state: int, length: int = 256) -> float:
    """Bytes autograd keeps per token for one scan with every input requiring grad."""
    g = torch.Generator().manual_seed(14)
    u, delta, z = (torch.randn(1, d_inner, length, generator=g, requires_grad=True) for _ in range(3))
    B, C = (torch.randn(1, d_state, length, generator=g, requires_grad=True) for _ in range(2))
    A = -torch.rand(d_inner, d_state, generator=g).add(0.5).requires_grad_()
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selective_scan_chunked(u, delta, A, B, C, z=z, delta_softplus=True)
    return sum(saved) / length


def test_chunked_scan_keeps_inputs_not_states_for_backward():
    """What autograd keeps grows with d_inner + d_state per token, not d_inner * d_state:
    the backward pass recomputes the states group by group."""
    small, large = _saved_bytes_per_token(64, 4), _saved_bytes_per_token(64, 64)
    assert large - small <= 4 * (64 - 4) * 4 + 1024, (small, large)  # B, C and a state per group
    assert large < 64 * 64 * 4 / 4, large  # a quarter of one float32 state per token


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunked_scan_matches_reference_without_optional_arguments(dtype):
    inputs = _scan_inputs(45, dtype, full=False)
    expected = selective_scan_reference(**inputs)
    actual = selective_scan_chunked(**inputs, chunk_size=16)
    assert actual.shape == (BATCH, D_INNER, 45) and actual.dtype == dtype
    torch.testing.assert_close(actual, expected, **TOLERANCE[dtype])


def test_chunked_scan_is_stable_on_long_sequences_with_strong_decay():
    """Steps of ~4 against |A| up to 16 make a chunk's cumulative log decay reach -8000:
    exp(-cumsum) over such a chunk would overflow, so the chunks shrink instead."""
    length = 600
    inputs = _scan_inputs(length, torch.float32, full=False, seed=3)
    with torch.no_grad():
        inputs["delta"].add_(4.0)
        inputs["A"].copy_(-torch.arange(1, D_STATE + 1, dtype=torch.float32).expand(D_INNER, -1) * 4)
    y = selective_scan_chunked(**inputs, chunk_size=128)
    (grads,) = torch.autograd.grad(y.square().sum(), [inputs["delta"]])
    assert torch.isfinite(y).all() and torch.isfinite(grads).all()
    exact = selective_scan_reference(**{k: v.detach().double() for k, v in inputs.items()})
    torch.testing.assert_close(y.detach().double(), exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("split", [1, 13, 40])
def test_scan_in_two_pieces_with_carried_state_equals_one_pass(split):
    length = 41
    inputs = _scan_inputs(length, torch.float64, full=False, seed=1)
    whole, whole_last = selective_scan_chunked(**inputs, return_last_state=True, chunk_size=8)
    first = {k: (v[..., :split] if v.dim() == 3 else v) for k, v in inputs.items()}
    second = {k: (v[..., split:] if v.dim() == 3 else v) for k, v in inputs.items()}
    y1, state = selective_scan_chunked(**first, return_last_state=True, chunk_size=8)
    y2, last = selective_scan_chunked(**second, initial_state=state, return_last_state=True, chunk_size=8)
    torch.testing.assert_close(torch.cat([y1, y2], dim=-1), whole, **TOLERANCE[torch.float64])
    torch.testing.assert_close(last, whole_last, **TOLERANCE[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_initial_state_added_by_linearity_matches_scan_from_that_state(dtype):
    """The path that lets mamba-ssm's kernel (no initial_state argument) stream segments,
    checked with the chunked scan standing in for the kernel."""
    inputs = _scan_inputs(29, dtype, seed=2)
    expected = _outputs_and_grads(selective_scan_chunked, inputs, chunk_size=8)

    def zero_state_then_linearity(initial_state, **rest):
        return _scan_with_initial_state(
            selective_scan_chunked, initial_state=initial_state, chunk_size=8, **rest
        )

    actual = _outputs_and_grads(zero_state_then_linearity, inputs)
    _assert_all_close(actual, expected, dtype)


def test_dispatcher_uses_the_chunked_scan_off_cuda():
    inputs = _scan_inputs(20, torch.float32, seed=4)
    expected = selective_scan_chunked(**inputs, delta_softplus=True, chunk_size=8)
    torch.testing.assert_close(selective_scan(**inputs, delta_softplus=True, chunk_size=8), expected, rtol=0, atol=0)


@pytest.fixture
def fake_kernel(monkeypatch):
    """Stand-in for mamba-ssm's kernel on CPU, with its limits: no initial_state argument
    and no gradient through the last state. Records each call."""
    calls = []

    def kernel(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
        calls.append(return_last_state)
        y, last = selective_scan_chunked(
            u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus, return_last_state=True
        )
        return (y, last.detach()) if return_last_state else y

    monkeypatch.setattr(scan_module, "_fused_selective_scan_fn", lambda: kernel)
    monkeypatch.setattr(scan_module, "fused_scan_available", lambda u: True)
    return calls


def test_dispatcher_gives_the_kernel_a_carried_state_by_linearity(fake_kernel):
    inputs = _scan_inputs(21, torch.float64, seed=5)
    with torch.no_grad():
        expected = selective_scan_chunked(**inputs, delta_softplus=True, return_last_state=True)
        actual = selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    assert fake_kernel == [True]
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **TOLERANCE[torch.float64])


def test_dispatcher_keeps_gradients_through_the_last_state(fake_kernel):
    inputs = _scan_inputs(21, torch.float64, seed=6)
    expected = _outputs_and_grads(selective_scan_chunked, inputs)
    actual = _outputs_and_grads(selective_scan, inputs)
    assert fake_kernel == []  # the kernel would have dropped d(last_state)/d(inputs)
    _assert_all_close(actual, expected, torch.float64)
    selective_scan(**inputs).sum().backward()  # no last state wanted: the kernel is fine
    assert fake_kernel == [True]  # (called for y, then the initial state added by linearity)


def test_scan_rejects_time_invariant_B():
    inputs = _scan_inputs(6, torch.float32, full=False)
    inputs["B"] = torch.randn(D_INNER, D_STATE)
    with pytest.raises(ValueError, match="input-dependent"):
        selective_scan_chunked(**inputs)


# --------------------------------------------------------------------------- mixer


def _mixer(dtype: torch.dtype = torch.float32, d_model: int = 16, seed: int = 0) -> MambaMixer:
    torch.manual_seed(seed)
    mixer = MambaMixer(d_model, d_state=4, chunk_size=8).to(dtype)
    with torch.no_grad():  # make D and the conv bias less trivial than their init
        mixer.D.normal_()
        mixer.conv1d.bias.normal_()
    return mixer


def test_mixer_state_dict_has_mamba_ssm_names_and_shapes():
    d_model, d_state, d_conv, expand = 40, 16, 4, 2
    mixer = MambaMixer(d_model, d_state=d_state, d_conv=d_conv, expand=expand)
    d_inner, dt_rank = expand * d_model, math.ceil(d_model / 16)
    expected_shapes = {
        "in_proj.weight": (2 * d_inner, d_model),
        "conv1d.weight": (d_inner, 1, d_conv),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (dt_rank + 2 * d_state, d_inner),
        "dt_proj.weight": (d_inner, dt_rank),
        "dt_proj.bias": (d_inner,),
        "A_log": (d_inner, d_state),
        "D": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }
    assert set(expected_shapes) == set(MAMBA_SSM_PARAMETER_NAMES)
    state = mixer.state_dict()
    assert set(state) == set(MAMBA_SSM_PARAMETER_NAMES)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_shapes


def test_block_and_encoder_use_mamba_ssm_block_names():
    block_keys = set(MambaBlock(16, d_state=4).state_dict())
    assert block_keys == {"norm.weight"} | {f"mixer.{name}" for name in MAMBA_SSM_PARAMETER_NAMES}
    encoder_keys = set(MambaContextEncoder(16, depth=2, d_state=4).state_dict())
    assert "norm_f.weight" in encoder_keys and "layers.1.mixer.A_log" in encoder_keys


def test_mixer_initialisation_follows_mamba():
    mixer = MambaMixer(32, d_state=8)
    torch.testing.assert_close(mixer.A_log, torch.log(torch.arange(1.0, 9.0)).expand(64, -1))
    torch.testing.assert_close(mixer.D, torch.ones(64))
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert dt.std() > 0  # sampled, not constant


def _mixer_the_long_way(mixer: MambaMixer, hidden: torch.Tensor) -> torch.Tensor:
    """mamba's slow path written out with the modules themselves (padded conv, truncated)
    and the sequential scan: an independent check of the mixer's wiring."""
    length = hidden.shape[1]
    x, z = mixer.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)
    x = F.silu(mixer.conv1d(x)[..., :length])
    dt, B, C = mixer.x_proj(x.transpose(1, 2)).split([mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
    delta = (mixer.dt_proj.weight @ dt.transpose(1, 2))
    y = selective_scan_reference(
        x, delta, -torch.exp(mixer.A_log), B.transpose(1, 2), C.transpose(1, 2), mixer.D, z,
        delta_bias=mixer.dt_proj.bias, delta_softplus=True,
    )  # fmt: skip
    return mixer.out_proj(y.transpose(1, 2))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mixer_matches_mamba_slow_path(dtype):
    mixer = _mixer(dtype)
    hidden = torch.randn(2, 23, 16, dtype=dtype)
    torch.testing.assert_close(mixer(hidden), _mixer_the_long_way(mixer, hidden), **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("segments", [[30], [10, 20], [1, 1, 2, 9, 17], [3, 3, 3, 21]])
def test_mixer_streaming_in_segments_equals_one_pass(dtype, segments):
    """Segments shorter than d_conv - 1 included: the conv tail must span segments."""
    mixer = _mixer(dtype)
    hidden = torch.randn(2, sum(segments), 16, dtype=dtype, requires_grad=True)
    whole, whole_state = mixer(hidden, return_state=True)
    state, pieces = None, []
    for piece in hidden.split(segments, dim=1):
        out, state = mixer(piece, state, return_state=True)
        pieces.append(out)
    streamed = torch.cat(pieces, dim=1)
    torch.testing.assert_close(streamed, whole, **TOLERANCE[dtype])
    torch.testing.assert_close(state.ssm, whole_state.ssm, **TOLERANCE[dtype])
    torch.testing.assert_close(state.conv, whole_state.conv, **TOLERANCE[dtype])
    (grad_streamed,) = torch.autograd.grad(streamed.square().sum(), hidden)
    (grad_whole,) = torch.autograd.grad(whole.square().sum(), hidden)
    torch.testing.assert_close(grad_streamed, grad_whole, **TOLERANCE[dtype])


def test_rms_norm():
    norm = RMSNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(8.0))
    x = torch.randn(3, 8)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * torch.arange(8.0)
    torch.testing.assert_close(norm(x), expected)


# --------------------------------------------------------------------------- encoder


def _encoder(**kwargs) -> MambaContextEncoder:
    torch.manual_seed(0)
    return create_context_encoder("mamba", dim=16, depth=2, d_state=4, chunk_size=8, **kwargs)


def test_encoder_is_registered_and_keeps_the_shape():
    assert "mamba" in CONTEXT_ENCODERS
    encoder = _encoder()
    assert isinstance(encoder, MambaContextEncoder) and encoder.dim == 16
    assert encoder(torch.randn(2, 11, 16)).shape == (2, 11, 16)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("segment_len", [1, 7, 20])
def test_encoder_segments_do_not_change_the_result(bidirectional, segment_len):
    tokens = torch.randn(2, 27, 16)
    whole = _encoder(segment_len=10_000, bidirectional=bidirectional)(tokens)
    segmented = _encoder(segment_len=segment_len, bidirectional=bidirectional)(tokens)
    torch.testing.assert_close(segmented, whole, rtol=1e-5, atol=1e-5)


def _first_token_sensitivity(encoder: MambaContextEncoder, length: int = 25) -> torch.Tensor:
    """|d out[0] / d tokens[t]| per position t, in float64 so that a weak but real
    dependence (an untrained model's small steps decay slowly) is not lost to rounding."""
    encoder = encoder.double()
    tokens = torch.randn(1, length, encoder.dim, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(encoder(tokens)[:, 0].sum(), tokens)
    return grad.abs().amax(dim=(0, 2))


def test_bidirectional_encoder_lets_later_tokens_reach_the_first():
    sensitivity = _first_token_sensitivity(_encoder(bidirectional=True, segment_len=8))
    assert (sensitivity > 1e-9).all()


def test_unidirectional_encoder_is_causal():
    encoder = _encoder(bidirectional=False, segment_len=8)
    sensitivity = _first_token_sensitivity(encoder)
    assert sensitivity[0] > 0 and (sensitivity[1:] == 0).all()
    tokens = torch.randn(1, 25, 16, dtype=torch.float64)  # the encoder is float64 now
    changed = tokens.clone()
    changed[:, 13:] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(encoder(changed)[:, :13], encoder(tokens)[:, :13], rtol=0, atol=0)


def test_bidirectional_encoder_reverses_every_other_layer():
    """Layer 2 of 2 reads back to front: the encoder equals layer 1, then layer 2 on the
    flipped sequence, flipped back, then the final norm."""
    encoder = _encoder(bidirectional=True)
    tokens = torch.randn(1, 9, 16)
    first, second = encoder.layers
    expected = encoder.norm_f(second(first(tokens).flip(1)).flip(1))
    torch.testing.assert_close(encoder(tokens), expected)


# --------------------------------------------------------------------------- mamba-ssm


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mamba-ssm's kernels need CUDA")
def test_mixer_matches_mamba_ssm_module():
    mamba_ssm = pytest.importorskip("mamba_ssm")
    torch.manual_seed(0)
    theirs = mamba_ssm.Mamba(d_model=64, d_state=16, d_conv=4, expand=2).cuda()
    ours = MambaMixer(64, d_state=16, d_conv=4, expand=2).cuda()
    ours.load_state_dict(theirs.state_dict())
    hidden = torch.randn(2, 300, 64, device="cuda")
    with torch.no_grad():
        expected = theirs(hidden)
        torch.testing.assert_close(ours(hidden), expected, rtol=1e-4, atol=1e-4)
        # Streaming keeps to the fused kernel plus the linearity correction.
        first, state = ours(hidden[:, :100], return_state=True)
        second = ours(hidden[:, 100:], state)
        torch.testing.assert_close(torch.cat([first, second], dim=1), expected, rtol=1e-4, atol=1e-4)
