"""Memory against slide size: generated pyramidal slides of real tiles, one fresh process each.

Run a child by hand: ``python -m xt_bench.memory SLIDE [--model PATH] ...``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from xt_bench.model import _peak_rss_mb, load_bench_model
from xt_bench.reading import machine_info
from xt_bench.slides import make_bench_slide, tile_pool

from xt_core.slide import open_slide


def memory_benchmark(
    sizes: tuple[int, ...] = (4096, 16384, 32768),
    *,
    model: str | None = None,
    batch_size: int | None = None,
    workers: int = 2,
    target_mpp: float | None = None,
    workdir: str | os.PathLike | None = None,
    keep: bool = False,
    backend: str = "auto",
    progress=None,
) -> dict:
    """Peak memory of predict_slide on generated slides of growing size, each in a fresh process.

    For every size a slide is generated (:func:`make_bench_slide`) and a new Python process
    loads the model and runs :func:`~xt_core.inference.predict_slide` on it, reporting its own
    peak RSS (``ru_maxrss``), so the figures do not carry over between sizes. ``target_mpp``
    overrides the model's working resolution (e.g. 2.0: 16x fewer regions, for a quick run).
    Each run also reports its peak right after loading the model and right after
    ``open_slide(backend=backend)``, so it shows where the memory goes.
    """
    import json
    import subprocess
    import sys
    import tempfile

    sizes = tuple(sorted(int(s) for s in sizes))
    tmp = tempfile.TemporaryDirectory(prefix="xt-membench-", dir=workdir) if not keep else None
    folder = Path(tmp.name) if tmp is not None else Path(workdir or tempfile.mkdtemp(prefix="xt-membench-"))
    folder.mkdir(parents=True, exist_ok=True)
    runs = []
    try:
        pool = tile_pool()
        for size in sizes:
            slide = folder / f"bench-{size}px.tif"
            t0 = time.perf_counter()
            make_bench_slide(slide, size, pool=pool)
            made = time.perf_counter() - t0
            if progress:
                progress(f"{size} px: slide written in {made:.0f} s ({slide.stat().st_size / 2**20:.0f} MiB), running")
            cmd = [sys.executable, "-m", "xt_bench.memory", str(slide),
                   "--workers", str(workers), "--backend", backend]
            if batch_size is not None:
                cmd += ["--batch-size", str(batch_size)]
            if model is not None:
                cmd += ["--model", str(model)]
            if target_mpp is not None:
                cmd += ["--target-mpp", str(target_mpp)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"memory bench at {size} px failed: {proc.stderr.strip()[-2000:]}")
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            run.update(size_px=size, slide_mib=round(slide.stat().st_size / 2**20, 1),
                       generate_s=round(made, 1))
            runs.append(run)
            if progress:
                progress(f"{size} px: {run['regions']} regions, peak RSS {run['peak_rss_mb']:.0f} MB, "
                         f"{run['regions_per_s']:.1f} regions/s")
            if not keep:
                slide.unlink()
    finally:
        if tmp is not None:
            tmp.cleanup()
    smallest, largest = runs[0], runs[-1]
    return {
        "sizes": list(sizes),
        "runs": runs,
        "peak_rss_ratio": round(largest["peak_rss_mb"] / smallest["peak_rss_mb"], 3),
        "batch_size": batch_size,
        "workers": workers,
        "target_mpp": target_mpp,
        "backend": backend,
        "machine": machine_info(),
        "workdir": str(folder) if keep else None,
    }


def _memory_child(argv: list[str]) -> int:
    """One memory-bench run in this (fresh) process; prints one JSON line."""
    import argparse
    import json

    import psutil

    from xt_core import runtime

    runtime.prepare_process()  # before torch is imported, as xt-slide does
    from xt_core.errors import SlideError
    from xt_core.inference import predict_slide
    from xt_core.settings import RunSettings

    parser = argparse.ArgumentParser(prog="python -m xt_bench.memory")
    parser.add_argument("slide")
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the engine's (RunSettings)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--target-mpp", type=float, default=None)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args(argv)
    applied = runtime.configure()
    model, description = load_bench_model(args.model)
    rss_model = psutil.Process().memory_info().rss / 2**20
    peak_model = _peak_rss_mb()
    with open_slide(args.slide, backend=args.backend) as slide:
        peak_open = _peak_rss_mb()
        try:
            result = predict_slide(model, slide, RunSettings(batch_size=args.batch_size, workers=args.workers,
                                                             device="cpu", target_mpp=args.target_mpp))
        except SlideError:  # no tissue found (a tiny slide): measure on every region
            result = predict_slide(model, slide, RunSettings(batch_size=args.batch_size, workers=args.workers, device="cpu",
                                                             target_mpp=args.target_mpp, tissue_threshold=0.0))
    out = {
        "pid": os.getpid(),
        "regions": result.regions_tissue,
        "regions_total": result.regions_total,
        "levels": slide.level_count,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_after_model_load_mb": round(rss_model, 1),
        "peak_rss_after_model_load_mb": peak_model,
        "peak_rss_after_open_slide_mb": peak_open,
        "backend": slide.backend,
        "regions_per_s": round(result.regions_tissue / result.timings["encode"], 2),
        "total_s": round(result.timings["total"], 1),
        "model": description,
        "runtime": applied,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":  # python -m xt_bench.memory SLIDE ...: one child run
    import sys

    sys.exit(_memory_child(sys.argv[1:]))
