"""Context encoders at whole-slide length: the selective scan, HyperAttention against exact
attention, and memory at inference. ``run_context_bench.py`` prints the README's tables.

Figures are time (best of a few runs, so another process's burst counts less) and memory
(bytes autograd keeps, or peak resident memory of a fresh process), on the CPU.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from xt_core.models.context import selective_scan as scan_module


# ----------------------------------------------------------------------------- helpers
def best_seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    """The fastest of ``repeats`` calls (one untimed warm-up call first)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd keeps for backward while ``fn()`` runs (views counted
    at their own size, so a tensor saved twice counts twice: an upper bound)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


# ----------------------------------------------------------------------------- the scan
def previous_chunked_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          initial_state=None, return_last_state=False, chunk_size=64):  # fmt: skip
    """The scan this package had before (issue 12), kept as the benchmark's baseline: chunks
    of ``chunk_size`` whose states come from a Hillis-Steele doubling scan (``log2 T``
    rounds of elementwise work per chunk), autograd through all of it."""
    dtype = torch.promote_types(u.dtype, torch.float32)
    u, A, B, C = u.to(dtype), A.to(dtype), B.to(dtype), C.to(dtype)
    step = scan_module._discretisation_step(delta, delta_bias, delta_softplus, dtype)
    state = None if initial_state is None else initial_state.to(dtype)
    outputs = []
    for start in range(0, u.shape[-1], chunk_size):
        window = slice(start, start + chunk_size)
        decay = torch.exp(step[..., window].unsqueeze(-1) * A[:, None, :])
        drive = (step[..., window] * u[..., window]).unsqueeze(-1) * B[..., window].transpose(1, 2).unsqueeze(1)
        if state is not None:
            drive = torch.cat([drive[:, :, :1] + decay[:, :, :1] * state.unsqueeze(2), drive[:, :, 1:]], dim=2)
        offset = 1
        while offset < decay.shape[-2]:
            shifted = F.pad(drive[..., :-offset, :], (0, 0, offset, 0))
            drive = drive + decay * shifted
            if 2 * offset < decay.shape[-2]:
                decay = decay * F.pad(decay[..., :-offset, :], (0, 0, offset, 0), value=1.0)
            offset *= 2
        outputs.append(torch.einsum("bdtn,btn->bdt", drive, C[..., window].transpose(1, 2)))
        state = drive[:, :, -1]
    y = scan_module._skip_and_gate(torch.cat(outputs, dim=-1), u, D, z, u.dtype)
    return (y, state) if return_last_state else y


SCANS: dict[str, Callable] = {
    "sequential loop (reference)": scan_module.selective_scan_reference,
    "previous chunked scan (doubling)": previous_chunked_scan,
    "log-space chunked scan": scan_module.selective_scan_chunked,
}


def mamba_scan_inputs(length: int, d_model: int = 256, d_state: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """The scan's arguments exactly as a freshly initialised Mamba mixer makes them from
    RMS-normed random tokens: realistic step sizes (softplus of the learned bias and
    projection), the S4D-real ``A``, input-dependent ``B`` and ``C``, and the mixer's memory
    layouts (``u`` from the depthwise conv, channel-major; ``delta``, ``z``, ``B``, ``C``
    transposed views of the projections, time-major)."""
    from xt_core.models.context.layers import RMSNorm
    from xt_core.models.context.mamba import MambaMixer

    torch.manual_seed(seed)
    mixer = MambaMixer(d_model, d_state=d_state)
    with torch.no_grad():
        hidden = RMSNorm(d_model)(torch.randn(1, length, d_model))
        x, z = mixer.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)
        x, _ = mixer._causal_conv(x, x.new_zeros(1, mixer.d_inner, mixer.d_conv - 1))
        x = F.silu(x)
        dt, B, C = mixer.x_proj(x.transpose(1, 2)).split([mixer.dt_rank, d_state, d_state], dim=-1)
        delta = F.linear(dt, mixer.dt_proj.weight).transpose(1, 2)
    return dict(
        u=x, delta=delta, A=-torch.exp(mixer.A_log.detach()), B=B.transpose(1, 2), C=C.transpose(1, 2),
        D=mixer.D.detach().clone(), z=z, delta_bias=mixer.dt_proj.bias.detach().clone(),
    )  # fmt: skip


def scan_benchmark(
    length: int = 4096, d_model: int = 256, repeats: int = 5, threads: int = 1, backward: bool = True,
    scans: Optional[dict[str, Callable]] = None,
) -> list[dict]:
    """Forward (no autograd) and forward + backward seconds, and the bytes autograd keeps per
    token, of each scan on the same Mamba-like inputs (float32, ``threads`` torch threads).

    The scans take turns within each repeat and each figure is the best of ``repeats``, so
    a burst of load from another process slows one sample, not one scan. The largest
    difference from the sequential loop's forward output is reported too.
    """
    scans = scans or SCANS
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inputs = mamba_scan_inputs(length, d_model)
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        with torch.no_grad():
            expected = scan_module.selective_scan_reference(**inputs, delta_softplus=True)
        rows = {name: dict(scan=name, length=length, d_inner=2 * d_model, forward_s=float("inf"),
                           forward_backward_s=float("inf")) for name in scans}  # fmt: skip

        def forward(scan: Callable) -> torch.Tensor:
            with torch.no_grad():
                return scan(**inputs, delta_softplus=True)

        def forward_backward(scan: Callable) -> None:
            scan(**leaves, delta_softplus=True).square().mean().backward()

        for name, scan in scans.items():  # warm-up, accuracy, memory
            rows[name]["max_abs_diff"] = float((forward(scan) - expected).abs().max())
            if backward:
                forward_backward(scan)
                rows[name]["saved_bytes_per_token"] = saved_bytes(lambda: scan(**leaves, delta_softplus=True)) / length
        for _ in range(repeats):
            for name, scan in scans.items():
                start = time.perf_counter()
                forward(scan)
                rows[name]["forward_s"] = min(rows[name]["forward_s"], time.perf_counter() - start)
                if backward:
                    start = time.perf_counter()
                    forward_backward(scan)
                    elapsed = time.perf_counter() - start
                    rows[name]["forward_backward_s"] = min(rows[name]["forward_backward_s"], elapsed)
        return list(rows.values())
    finally:
        torch.set_num_threads(previous_threads)


# ----------------------------------------------------------------------------- attention
ATTENTION_CHILD = r"""
import json, sys, time
import torch
from xt_bench.context import build_attention, peak_rss_mib, rss_mib
method, (length, dim, heads, threads) = sys.argv[1], map(int, sys.argv[2:6])
torch.set_num_threads(threads)
layer = build_attention(method, dim, heads)
x = torch.randn(1, length, dim, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    layer(x[:, :512])  # warm-up: allocator, kernels
    base = rss_mib()
    start = time.perf_counter()
    layer(x)
    seconds = time.perf_counter() - start
peak = peak_rss_mib()
print(json.dumps(dict(method=method, length=length, seconds=seconds, working_mib=peak - base, peak_mib=peak)))
"""


def peak_rss_mib() -> float:
    """This process's peak resident memory (``VmHWM``), MiB. Not ``ru_maxrss``: Linux carries
    that over fork and exec, so a child of a larger parent would report the parent's peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def rss_mib() -> float:
    """This process's resident memory now (Linux ``/proc``), MiB."""
    import resource

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def build_attention(method: str, dim: int, heads: int) -> torch.nn.Module:
    """One attention layer (projections included), eval mode: ``exact`` is the ``attention``
    encoder's (query chunks of 4096 on the CPU), ``hyper`` the ``hyper`` encoder's defaults
    (blocks of 256, 256 sampled columns, exact below 4096 keys)."""
    from xt_core.models.context.attention import SelfAttention
    from xt_core.models.context.hyper import HyperSelfAttention

    torch.manual_seed(0)
    layer = SelfAttention(dim, heads) if method == "exact" else HyperSelfAttention(dim, heads)
    return layer.eval()


def attention_benchmark(
    lengths: tuple[int, ...] = (4096, 16384, 65536), dim: int = 192, heads: int = 3, threads: int = 1,
    methods: tuple[str, ...] = ("exact", "hyper"),
) -> list[dict]:
    """Seconds and working memory (peak resident memory of the call above what the process
    held before it) of one attention layer's forward over ``L`` tokens, each measurement in a
    fresh process so that peaks do not carry over."""
    import json
    import subprocess
    import sys

    rows = []
    for length in lengths:
        for method in methods:
            done = subprocess.run([sys.executable, "-c", ATTENTION_CHILD, method, str(length), str(dim), str(heads),
                                   str(threads)], capture_output=True, text=True, check=True)  # fmt: skip
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


# ----------------------------------------------------------------------------- inference
#: The context encoders as the bundled default model's configuration would build them
#: (width 96, 4 heads): its own Transformer-XL, and the others at their defaults.
INFERENCE_ENCODERS: dict[str, dict] = {
    "transformer_xl": dict(depth=2, heads=4, mlp_ratio=2.0, segment_len=256),
    "mamba": dict(depth=4),
    "hyper": dict(depth=2, heads=4, mlp_ratio=2.0),
    "attention": dict(depth=2, heads=4, mlp_ratio=2.0),
}

INFERENCE_CHILD = r"""
import json, sys, time
import torch
from xt_bench.context import INFERENCE_ENCODERS, peak_rss_mib, rss_mib
from xt_core.models.context import create_context_encoder
name, length, dim, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
encoder = create_context_encoder(name, dim=dim, **INFERENCE_ENCODERS[name]).eval()
with torch.inference_mode():
    encoder(torch.randn(1, 256, dim))  # warm-up
    x = torch.randn(1, length, dim)
    base = rss_mib()
    start = time.perf_counter()
    out = encoder(x)
    seconds = time.perf_counter() - start
peak = peak_rss_mib()
print(json.dumps(dict(encoder=name, length=length, seconds=seconds, working_mib=peak - base,
                      sequence_mib=x.numel() * 4 / 2**20)))
"""


def inference_memory(name: str, length: int, dim: int = 96, threads: int = 1, timeout: float = 600) -> dict:
    """Seconds and working memory (peak resident memory above what the process held with the
    input sequence allocated) of one context encoder's forward at inference over ``length``
    tokens, in a fresh process. ``sequence_mib`` is the size of the input sequence itself,
    for scale: the output alone is as large."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", INFERENCE_CHILD, name, str(length), str(dim), str(threads)],
                          capture_output=True, text=True, check=True, timeout=timeout)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


POOL_CHILD = r"""
import json, sys
import torch
from xt_bench.context import peak_rss_mib, rss_mib
from xt_core.models import heads
length, dim, chunk = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
heads.POOL_CHUNK = chunk
torch.manual_seed(0)
head = heads.AttentionPoolClassifier(dim, 3).eval()
with torch.inference_mode():
    head(torch.randn(1, 256, dim))
    tokens = torch.randn(1, length, dim)
    base = rss_mib()
    head(tokens)
peak = peak_rss_mib()
print(json.dumps(dict(length=length, chunk=chunk, working_mib=peak - base, tokens_mib=tokens.numel() * 4 / 2**20)))
"""


def pooling_memory(length: int = 100_000, dim: int = 96, chunk: int | None = None) -> dict:
    """Working memory of the attention-pooling classifier over ``length`` tokens (fresh process):
    streamed in chunks of ``chunk`` tokens (default: the heads' ``POOL_CHUNK``), or all at
    once when ``chunk >= length``."""
    import json
    import subprocess
    import sys

    from xt_core.models.heads import POOL_CHUNK

    done = subprocess.run([sys.executable, "-c", POOL_CHILD, str(length), str(dim), str(chunk or POOL_CHUNK)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- training
TRAINING_CHILD = r"""
import json, sys, time
import torch
import torch.nn.functional as F
from xt_bench.context import INFERENCE_ENCODERS, peak_rss_mib, rss_mib
from xt_core.models.context import create_context_encoder
from xt_core.models.heads import AttentionPoolClassifier, SegmentationHead
name, length, dim, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[5])
recompute = sys.argv[4] == "1"
torch.set_num_threads(threads)
torch.manual_seed(0)
encoder = create_context_encoder(name, dim=dim, recompute=recompute, **INFERENCE_ENCODERS[name]).train()
classifier, segmenter = AttentionPoolClassifier(dim, 3).train(), SegmentationHead(dim, 3).train()

def step(tokens):
    out = encoder(tokens)
    loss = F.cross_entropy(classifier(out), torch.tensor([1]))
    seg = segmenter(out)
    del out  # as in training (model.heads(model.contextualize(...))): only the heads' graph holds it
    loss = loss + F.cross_entropy(seg.reshape(-1, 3), torch.randint(0, 3, (seg.shape[1],)))
    loss.backward()

step(torch.randn(1, 512, dim, requires_grad=True))  # warm-up
features = torch.randn(1, length, dim, requires_grad=True)  # the frozen region features, projected
base = rss_mib()
start = time.perf_counter()
step(features)
seconds = time.perf_counter() - start
peak = peak_rss_mib()
print(json.dumps(dict(encoder=name, length=length, recompute=recompute, seconds=seconds, peak_mib=peak,
                      base_mib=base, sequence_mib=features.numel() * 4 / 2**20)))
"""


def training_memory(name: str, length: int, recompute: bool = True, dim: int = 96, threads: int = 1,
                    mmap_threshold: int | None = None, timeout: float = 900) -> dict:
    """Peak resident memory of one training step (context encoder + classification and
    segmentation heads + backward) over ``length`` tokens standing for frozen, projected
    region features, in a fresh process; ``base_mib`` is the process before the step.

    ``mmap_threshold`` fixes glibc's mmap threshold (``MALLOC_MMAP_THRESHOLD_``) for the
    child: blocks above it get their own mapping, returned when freed. By default glibc
    raises the threshold as blocks are freed, after which a step's transient blocks come
    from the heap between longer-lived small ones, and the heap only grows.
    """
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    if mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    done = subprocess.run([sys.executable, "-c", TRAINING_CHILD, name, str(length), str(dim),
                           "1" if recompute else "0", str(threads)],
                          capture_output=True, text=True, check=True, timeout=timeout, env=env)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])
