"""Regenerate the README's context-encoder figures (Markdown tables on stdout).

    python bench/run_context_bench.py                  # every section
    python bench/run_context_bench.py --only scan      # the selective scan at L=4096
    python bench/run_context_bench.py --only hyper     # HyperAttention against exact attention
    python bench/run_context_bench.py --only inference # memory at 100k tokens, fresh processes
    python bench/run_context_bench.py --only training  # one training step's peak memory, 16k / 64k

Each section prints the machine's load average before and after: these figures are CPU
times, and another process on the same cores slows them.
"""

from __future__ import annotations

import argparse
import os

from xt_bench import context
from xt_bench.reading import machine_info


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def scan_section(length: int, repeats: int) -> str:
    before = _load()
    rows = context.scan_benchmark(length=length, repeats=repeats)
    after = _load()
    base = {r["scan"]: r for r in rows}
    ours = base["log-space chunked scan"]
    body = []
    for r in rows:
        body.append([
            r["scan"],
            f"{r['forward_s'] * 1e3:.0f} ({r['forward_s'] / ours['forward_s']:.1f}x)",
            f"{r['forward_backward_s'] * 1e3:.0f} ({r['forward_backward_s'] / ours['forward_backward_s']:.1f}x)",
            f"{r['saved_bytes_per_token'] / 1024:.1f}",
            f"{r['max_abs_diff']:.1e}",
        ])
    header = ["scan", "forward ms", "forward + backward ms", "autograd KiB / token", "max diff vs loop"]
    return (f"Selective scan, L={length}, d_inner={rows[0]['d_inner']}, d_state 16, float32, 1 thread "
            f"(best of {repeats}; load {before} -> {after}):\n\n" + _table(header, body))


def hyper_section(lengths: tuple[int, ...]) -> str:
    before = _load()
    rows = context.attention_benchmark(lengths)
    after = _load()
    by = {(r["method"], r["length"]): r for r in rows}
    body = []
    for length in lengths:
        exact, hyper = by[("exact", length)], by[("hyper", length)]
        body.append([
            f"{length:,}",
            f"{exact['seconds']:.2f}",
            f"{hyper['seconds']:.2f} (exact below 4096 keys)" if length <= 4096
            else f"{hyper['seconds']:.2f} ({exact['seconds'] / hyper['seconds']:.1f}x faster)",
            f"{exact['working_mib']:.0f}", f"{hyper['working_mib']:.0f}",
        ])
    header = ["tokens", "exact s", "hyper s", "exact working MiB", "hyper working MiB"]
    return ("One attention layer (dim 192, 3 heads of 64, projections included), forward, float32, 1 thread, "
            f"a fresh process per cell (load {before} -> {after}):\n\n" + _table(header, body))


def inference_section(lengths: tuple[int, ...] = (25_000, 100_000)) -> str:
    before = _load()
    body = []
    for name in ("transformer_xl", "mamba", "hyper"):
        for length in lengths:
            r = context.inference_memory(name, length)
            body.append([name, f"{length:,}", f"{r['seconds']:.1f}", f"{r['working_mib']:.0f}",
                         f"{r['sequence_mib']:.0f}"])
    streamed, whole = context.pooling_memory(), context.pooling_memory(chunk=10**9)
    after = _load()
    header = ["encoder", "tokens", "forward s", "working MiB", "sequence MiB"]
    return ("Context encoders at inference (width 96 as the default model; transformer_xl depth 2, segments of "
            "256; mamba depth 4; hyper depth 2), float32, 1 thread, a fresh process per cell "
            f"(load {before} -> {after}):\n\n" + _table(header, body)
            + f"\n\nAttention pooling over {streamed['length']:,} tokens: {streamed['working_mib']:.0f} MiB "
            f"streamed in chunks of {streamed['chunk']}, {whole['working_mib']:.0f} MiB all at once "
            f"(tokens: {streamed['tokens_mib']:.0f} MiB).")


def training_section(encoders: tuple[str, ...], lengths: tuple[int, ...] = (16384, 65536),
                     exact_lengths: tuple[int, ...] = (4096, 16384)) -> str:
    """``encoders`` at ``lengths``, then exact ``attention`` at ``exact_lengths`` (its time is
    quadratic: a step at 64k tokens would take minutes)."""
    before = _load()
    body = []
    for name in (*encoders, "attention"):
        cells = exact_lengths if name == "attention" else lengths
        plain = context.training_memory(name, cells[0], recompute=False)
        body.append([name, f"{cells[0]:,}", "no", "default", f"{plain['peak_mib']:.0f}", f"{plain['seconds']:.1f}"])
        for threshold, label in ((None, "default"), (1 << 20, "1 MiB")):
            peaks = []
            for length in cells:
                r = context.training_memory(name, length, mmap_threshold=threshold)
                peaks.append(r["peak_mib"])
                ratio = f" ({r['peak_mib'] / peaks[0]:.2f}x)" if len(peaks) > 1 else ""
                body.append([name, f"{length:,}", "yes", label, f"{r['peak_mib']:.0f}{ratio}", f"{r['seconds']:.1f}"])
    after = _load()
    header = ["encoder", "tokens", "recompute", "glibc mmap threshold", "peak RSS MiB", "step s"]
    return ("One training step (context encoder + attention-pooling classifier + segmentation head + backward) on "
            "frozen features of width 96, float32, 1 thread, a fresh process per cell "
            f"(load {before} -> {after}):\n\n" + _table(header, body))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["scan", "hyper", "inference", "training"], action="append")
    parser.add_argument("--encoders", nargs="+", default=["transformer_xl", "mamba", "hyper"],
                        help="context encoders for the training-memory section")
    parser.add_argument("--length", type=int, default=4096, help="scan length")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 65536],
                        help="token counts for the attention comparison")
    args = parser.parse_args(argv)
    sections = args.only or ["scan", "hyper", "inference", "training"]
    print(f"machine: {machine_info()}\n")
    if "scan" in sections:
        print(scan_section(args.length, args.repeats) + "\n")
    if "hyper" in sections:
        print(hyper_section(tuple(args.lengths)) + "\n")
    if "inference" in sections:
        print(inference_section() + "\n")
    if "training" in sections:
        print(training_section(tuple(args.encoders)) + "\n")


if __name__ == "__main__":
    main()
