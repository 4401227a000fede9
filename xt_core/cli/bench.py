"""``xt-slide bench``: throughput and memory figures, printed (one JSON object with ``--json``).

Three modes, chosen by the first word:

* ``xt-slide bench [model] [--model PATH] SLIDE``: regions/s of ``predict_slide`` end to end
  against the same region encoder on in-memory batches (the compute limit), their ratio, and
  the peak memory. The bundled default model when ``--model`` is left out.
* ``xt-slide bench read SLIDE``: regions/s read and decoded, 1 and 2 workers vs a sequential loop.
* ``xt-slide bench memory [--sizes 4096,16384,32768]``: peak memory of ``predict_slide`` on
  generated pyramidal slides of growing size, each in a fresh process.
* ``xt-slide bench scale [--side 16384]``: real slides at real scale, as a user waits for them:
  ``xt-slide classify`` regions per wall-clock second (process start included) over the encoder
  alone, on dense 0.5 and 0.25 um/px slides, with the decode/resample split per region; then
  peak memory and time outside the encode stage of classify/segment on a 98,304 x 81,920 px
  slide of needle cores against a 4,096 px one, and ``info`` on the large one. Minutes.
* ``xt-slide bench context [--section scan|hyper|inference|training ...]``: the context encoders
  at whole-slide length (``bench/run_context_bench.py``): the selective scan, HyperAttention
  against exact attention at 4k-64k tokens (time and memory), inference memory at 100k tokens,
  one training step's peak memory at 16k and 64k tokens. Every section by default; ten minutes.

A slide whose file is literally named ``read``, ``memory`` or ``model`` is given as ``./read``.
"""

from __future__ import annotations

import argparse
import json
import sys

from xt_core.cli._options import non_negative_int, positive_float, positive_int

MODES = ("model", "read", "memory", "scale", "context")
CONTEXT_SECTIONS = ("scan", "hyper", "inference", "training")
DEFAULT_SIZES = (4096, 16384, 32768)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.replace(" ", "").split(",") if s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of sizes: {text!r}") from None
    if not sizes or any(s < 512 or s % 512 for s in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be multiples of 512 px: {text!r}")
    return sizes


def add_parser(sub, name: str, parents) -> None:
    p = sub.add_parser(
        name, parents=parents,
        help="measure throughput and memory (bench SLIDE | bench read SLIDE | bench memory)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="xt-slide bench [model] SLIDE [--model PATH] [--json] [options]\n"
              "       xt-slide bench read SLIDE [options]\n"
              "       xt-slide bench memory [--sizes 4096,16384,32768] [options]\n"
              "       xt-slide bench scale [--side 16384] [options]\n"
              "       xt-slide bench context [--section NAME ...]",
    )
    p.add_argument("words", nargs="+", metavar="MODE/SLIDE",
                   help="SLIDE (model mode), 'model SLIDE', 'read SLIDE' or 'memory'")
    p.add_argument("--model", default=None, metavar="PATH",
                   help="checkpoint folder or file (default: the bundled default model)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="regions per batch (default: as classify, 0.4 megapixels' worth)")
    p.add_argument("--workers", type=non_negative_int, default=2, help="reader threads (model, memory)")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="model mode: runs of each measurement, the best is kept")
    p.add_argument("--sizes", type=_sizes, default=DEFAULT_SIZES,
                   help="memory mode: square slide sizes in px (default 4096,16384,32768)")
    p.add_argument("--side", type=positive_int, default=16384,
                   help="scale mode: side of the dense 0.5 um/px slide (the 0.25 um/px one is twice it)")
    p.add_argument("--section", choices=CONTEXT_SECTIONS, action="append", default=None,
                   help="context mode: one section (repeat for several; default: all)")
    p.add_argument("--keep", default=None, metavar="DIR",
                   help="memory mode: write the generated slides to DIR and keep them")
    p.add_argument("--region-size", type=positive_int, default=512, help="read mode")
    p.add_argument("--target-mpp", type=positive_float, default=None,
                   help="read: working resolution (default level 0); memory: overrides the model's "
                        "(e.g. 2 for a quick run with 16x fewer regions)")
    p.add_argument("--mpp", type=positive_float, default=None, help="the slide's mpp if its header has none")
    p.add_argument("--backend", default="auto", choices=["auto", "openslide", "tiffslide", "image"],
                   help="model, memory: reader library (default auto, as every command uses)")
    p.add_argument("--seconds", type=positive_float, default=3.0, help="read mode: minimum time per configuration")
    p.add_argument("--json", action="store_true", help="print one JSON object (and nothing else on stdout)")
    p.set_defaults(run=run)


def parse_mode(words: list[str]) -> tuple[str, str | None]:
    """``(mode, slide)`` from the positional words; ValueError with a usage message if wrong."""
    first, rest = words[0], words[1:]
    if first in MODES:
        mode = first
        if mode in ("memory", "scale", "context"):
            if rest:
                raise ValueError(f"bench {mode} takes no slide (got {' '.join(rest)!r})")
            return mode, None
        if len(rest) != 1:
            raise ValueError(f"bench {mode} needs exactly one SLIDE")
        return mode, rest[0]
    if rest:
        raise ValueError(f"unknown bench mode {first!r}: use 'bench SLIDE', 'bench read SLIDE' or 'bench memory'")
    return "model", first


def run(args: argparse.Namespace) -> int:
    try:
        mode, slide = parse_mode(args.words)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if mode == "read":
        return _run_read(args, slide)
    if mode == "memory":
        return _run_memory(args)
    if mode == "scale":
        return _run_scale(args)
    if mode == "context":
        return _run_context(args)
    return _run_model(args, slide)


def _run_context(args: argparse.Namespace) -> int:
    from xt_bench.run_context_bench import main as context_bench

    sections = args.section or list(CONTEXT_SECTIONS)
    context_bench([arg for name in sections for arg in ("--only", name)])
    return 0


def _run_scale(args: argparse.Namespace) -> int:
    from xt_bench.scale import markdown, run_all

    progress = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    result = run_all(args.keep, repeats=min(args.repeats, 2), side=args.side, progress=progress)
    print(json.dumps(result) if args.json else markdown(result))
    return 0


def _run_read(args: argparse.Namespace, slide: str) -> int:
    from xt_bench.reading import read_benchmark

    result = read_benchmark(
        slide, region_size=args.region_size, target_mpp=args.target_mpp, batch_size=args.batch_size,
        min_seconds=args.seconds, mpp=args.mpp,
    )
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    print(f"{result.slide}: {result.regions} regions of {result.region_size} px, "
          f"backend {result.backend}, batch {result.batch_size}, {result.passes} passes, "
          f"{result.machine['cpu_count']} CPUs")
    base = result.regions_per_s["sequential_openslide"]
    for name, rate in result.regions_per_s.items():
        print(f"  {name:<22} {rate:8.1f} regions/s  ({rate / base:.2f}x)")
    return 0


def _check_slide(path: str) -> None:
    from pathlib import Path

    from xt_core.slide.open import (
        _check_file,  # the same one-line errors as every command
    )

    _check_file(Path(path))


def _run_model(args: argparse.Namespace, slide: str) -> int:
    from xt_bench.model import model_benchmark

    from xt_core import runtime

    _check_slide(slide)
    runtime.configure()
    result = model_benchmark(slide, args.model, batch_size=args.batch_size, workers=args.workers,
                             repeats=args.repeats, mpp=args.mpp, backend=args.backend)
    if args.json:
        print(json.dumps(result))
        return 0
    print(format_model_result(result))
    return 0


def format_model_result(r: dict) -> str:
    e2e, enc = r["end_to_end"], r["encoder_only"]
    rt = r["runtime"]
    lines = [
        f"{r['slide']}: {r['regions']} of {r['regions_total']} regions ({r['region_size']} px at "
        f"{r['target_mpp']} um/px), batch {r['batch_size']}, {r['workers']} reader workers, {r['device']}",
        f"model: {r['model']}",
        f"runtime: allocator {rt.get('allocator')}, OpenMP wait policy {rt.get('omp_wait_policy')}, "
        f"torch threads {rt.get('torch_threads')} of {rt.get('cpu_count')} CPUs, channels-last {r['channels_last']}",
        "",
        f"  {'':<24}{'regions/s':>10}{'cpu user s':>12}{'cpu sys s':>11}",
        f"  {'end to end':<24}{r['end_to_end_regions_per_s']:>10.2f}"
        f"{e2e['cpu_user_s']:>12.1f}{e2e['cpu_sys_s']:>11.1f}",
        f"  {'encoder only':<24}{r['encoder_only_regions_per_s']:>10.2f}"
        f"{enc['cpu_user_s']:>12.1f}{enc['cpu_sys_s']:>11.1f}",
        f"  {'ratio':<24}{r['ratio']:>10.3f}",
        "",
        f"  predict_slide wall {e2e['total_s']:.1f} s (encode stage {e2e['encode_s']:.1f} s, waiting on reads "
        f"{e2e['read_wait_s']:.1f} s); best of {r['repeats']}",
        f"  peak RSS {r['peak_rss_mb']:.0f} MB",
    ]
    return "\n".join(lines)


def _run_memory(args: argparse.Namespace) -> int:
    from xt_bench.memory import memory_benchmark

    progress = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    result = memory_benchmark(args.sizes, model=args.model, batch_size=args.batch_size, workers=args.workers,
                              target_mpp=args.target_mpp, workdir=args.keep, keep=args.keep is not None,
                              backend=args.backend, progress=progress)
    if args.json:
        print(json.dumps(result))
        return 0
    print(format_memory_result(result))
    return 0


def format_memory_result(r: dict) -> str:
    lines = [f"  {'slide px':>9}{'regions':>9}{'peak RSS MB':>13}{'after open MB':>15}{'regions/s':>11}{'wall s':>8}"]
    for run in r["runs"]:
        lines.append(f"  {run['size_px']:>9}{run['regions']:>9}{run['peak_rss_mb']:>13.0f}"
                     f"{run['peak_rss_after_open_slide_mb']:>15.0f}{run['regions_per_s']:>11.1f}{run['total_s']:>8.0f}")
    sizes = r["sizes"]
    lines.append(f"  peak RSS {sizes[-1]} px / {sizes[0]} px: {r['peak_rss_ratio']:.3f}")
    return "\n".join(lines)
