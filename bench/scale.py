"""Real slides at real scale: what a user waits for, against the compute that cannot be avoided.

``throughput_benchmark`` runs ``xt-slide classify`` on a slide as a user does, in a fresh process
(process start, model load, opening, tissue detection, reading, encoding, context, heads and the
JSON all included), and divides the regions it analysed by that wall-clock time. Against it,
in the same run and alternately, the same model's region encoder alone on in-memory batches of
the slide's own regions (the compute limit). It also splits one reader thread's work per region
into decode (tiles to level pixels) and resample (level pixels to the working resolution).

``scale_benchmark`` runs ``classify`` and ``segment`` on a 100k px slide with a few needle cores
and on a 4k px slide, each in a fresh process, and reports peak memory (the child's own
``ru_maxrss``) and the time spent outside the encode stage; and ``xt-slide info`` on the large one.

Slides are generated with :func:`xt_core.slide.synthetic.write_synthetic_slide` into a temporary
folder: real H&E tiles, JPEG-tiled pyramids, blank glass around the tissue.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from xt_bench.reading import machine_info

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


# ----------------------------------------------------------------------------- slides
def dense_slide(path: Path, side: int, mpp: float) -> Path:
    """A slide covered with tissue (one island larger than the slide), ``side`` px at ``mpp``."""
    from xt_core.slide.synthetic import Island, write_synthetic_slide

    everywhere = [Island(side / 2, side / 2, side, side)]
    return write_synthetic_slide(path, side, side, mpp=mpp, islands=everywhere, levels=(1, 4, 16, 64))


def cores_slide(path: Path, width: int = 98_304, height: int = 81_920, mpp: float = 0.25) -> Path:
    """A 40x scan of a few needle cores on mostly empty glass, as the issue measured."""
    from xt_core.slide.synthetic import write_synthetic_slide

    return write_synthetic_slide(path, width, height, mpp=mpp, islands=4, levels=(1, 4, 16, 64))


# ----------------------------------------------------------------------------- processes
#: ``xt-slide ARGS`` as the console script runs it, then the process's own peak RSS (VmHWM) on
#: stderr. Not ru_maxrss: Linux carries that over fork and exec, so a child of a process that
#: once held more (this one, after writing a slide) would report the parent's peak.
_XT_SLIDE = (
    "import sys\n"
    "from xt_core.cli.main import exit_now, main\n"
    "code = main(sys.argv[1:])\n"
    "with open('/proc/self/status') as fh:\n"
    "    hwm = next(line.split()[1] for line in fh if line.startswith('VmHWM:'))\n"
    "print(f'XT_PEAK_RSS_KB={hwm}', file=sys.stderr)\n"
    "exit_now(code)\n"
)


def run_child(cmd: list[str]) -> dict[str, Any]:
    """Run a command; its wall time (process start included), peak RSS and CPU time.

    The peak is the child's own report (``XT_PEAK_RSS_KB=`` on stderr) where it gives one,
    else wait4's ``ru_maxrss``.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err.strip()[-2000:]}")
    reported = [line.split("=", 1)[1] for line in err.splitlines() if line.startswith("XT_PEAK_RSS_KB=")]
    peak_kb = int(reported[-1]) if reported else usage.ru_maxrss
    return {"wall_s": wall, "peak_rss_mb": peak_kb / 1024, "cpu_user_s": usage.ru_utime,
            "cpu_sys_s": usage.ru_stime, "stdout": out}


def xt_slide(*args: str) -> list[str]:
    """The command line of ``xt-slide ARGS`` in a fresh Python that reports its own peak RSS."""
    return [sys.executable, "-c", _XT_SLIDE, *args]


def classify(slide: Path, out: Path, *extra: str, command: str = "classify") -> dict[str, Any]:
    """``xt-slide classify SLIDE`` as a user runs it; the child's figures and the slide's record."""
    run = run_child(xt_slide(command, str(slide), "--out", str(out), "--quiet", *extra))
    record = json.loads((out / f"{Path(slide).stem}.json").read_text())
    run.pop("stdout")
    run["regions"] = record["regions"]["tissue"]
    run["timing"] = record["timing"]
    return run


# ----------------------------------------------------------------------------- encoder limit
def encoder_only(slide: Path, *, batch_size: int | None = None, regions: int = 640, repeats: int = 1) -> dict[str, Any]:
    """The default model's region encoder alone on in-memory batches of this slide's regions.

    ``batch_size`` None: the batch ``xt-slide classify`` uses (``RunSettings.regions_per_batch``);
    ``regions``: how many regions' worth of batches are timed (after two warm-up batches).
    """
    code = (
        "import json, sys\n"
        "from xt_core import runtime\n"
        "runtime.prepare_process()  # as xt-slide does, before torch is imported\n"
        "from xt_bench.scale import _encoder_child\n"
        f"print(json.dumps(_encoder_child({str(slide)!r}, {batch_size}, {regions}, {repeats})))\n"
    )
    run = run_child([sys.executable, "-c", code])
    return json.loads(run["stdout"].strip().splitlines()[-1])


def _encoder_child(slide_path: str, batch_size: int | None, regions: int, repeats: int) -> dict[str, Any]:
    import torch
    from xt_bench.model import encoder_benchmark

    from xt_core import runtime
    from xt_core.api import resolve_model
    from xt_core.settings import RunSettings
    from xt_core.slide import open_slide
    from xt_core.stream import iter_region_batches
    from xt_core.tissue import tissue_mask
    from xt_core.tokenize import make_region_grid

    runtime.configure()
    model = resolve_model(None).eval()
    model.region_encoder.to(memory_format=torch.channels_last)  # as predict_slide runs it
    cfg = model.config
    batch_size = RunSettings(batch_size=batch_size).regions_per_batch(cfg.region_size)
    with open_slide(slide_path) as slide:
        grid = make_region_grid(slide, target_mpp=cfg.target_mpp, region_size=cfg.region_size,
                                chunk_size=cfg.chunk_size, tissue=tissue_mask(slide))
        indices = grid.tissue_indices(cfg.tissue_threshold)[:batch_size]
        batch = next(iter_region_batches(slide, grid, batch_size=batch_size, workers=0, indices=indices,
                                         as_tensor=True))
    best = max((encoder_benchmark(model, batch.images, batches=max(1, regions // batch_size))
                for _ in range(repeats)), key=lambda r: r["regions_per_s"])
    return {"regions_per_s": best["regions_per_s"], "threads": torch.get_num_threads(), "batch_size": batch_size}


# ----------------------------------------------------------------------------- read split
def read_split(slide_path: Path, *, regions: int = 400, batch_size: int = 8) -> dict[str, Any]:
    """One reader thread's milliseconds per region: decode (level pixels) and resample (to the
    target), measured in a child so that this process stays small (Linux hands a parent's peak
    RSS on to the children it starts, which would spoil their figures)."""
    code = ("import json\nfrom xt_bench.scale import _read_split_child\n"
            f"print(json.dumps(_read_split_child({str(slide_path)!r}, {regions}, {batch_size})))\n")
    return json.loads(run_child([sys.executable, "-c", code])["stdout"].strip().splitlines()[-1])


def _read_split_child(slide_path: str, regions: int, batch_size: int) -> dict[str, Any]:
    from xt_core.api import resolve_model
    from xt_core.slide import open_slide
    from xt_core.slide.resample import shrink_by
    from xt_core.tissue import tissue_mask
    from xt_core.tokenize import make_region_grid

    cfg = resolve_model(None).config
    with open_slide(slide_path) as slide:
        grid = make_region_grid(slide, target_mpp=cfg.target_mpp, region_size=cfg.region_size,
                                chunk_size=cfg.chunk_size, tissue=tissue_mask(slide))
        indices = grid.tissue_indices(cfg.tissue_threshold)[:regions]
        rs, k = grid.region_size, grid.read_factor
        # libjpeg's scaled decode does both at once where the level allows it (resample 0)
        scaled = k > 1 and slide._tiles is not None and slide._tiles.can_shrink(grid.read_level, k)
        decode = resample = 0.0
        for start in range(0, len(indices) - batch_size + 1, batch_size):
            first = int(indices[start])
            row, col = divmod(first, grid.cols)
            ds = slide.level_downsamples[grid.read_level]
            where, size = (col * rs * k * ds, row * rs * k * ds), (batch_size * rs * k, rs * k)
            t0 = time.perf_counter()
            if scaled:
                slide.read_region_shrunk(where, grid.read_level, size, k)
                t1 = t2 = time.perf_counter()
            else:
                strip = slide.read_region(where, grid.read_level, size)
                t1 = time.perf_counter()
                shrink_by(strip, k)
                t2 = time.perf_counter()
            decode += t1 - t0
            resample += t2 - t1
        n = (len(indices) // batch_size) * batch_size
        return {"backend": slide.backend, "read_factor": k, "direct_tiles": bool(slide._tiles),
                "scaled_decode": scaled,
                "decode_ms_per_region": 1000 * decode / n, "resample_ms_per_region": 1000 * resample / n}


def throughput_benchmark(slide: Path, *, repeats: int = 2, workdir: Path | None = None) -> dict[str, Any]:
    """``xt-slide classify`` regions per wall-clock second over the encoder-only figure, best of ``repeats``."""
    e2e, enc = [], []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for r in range(repeats):  # alternately, so both see the same machine
            e2e.append(classify(slide, Path(tmp) / f"run{r}"))
            # as many regions as classify encoded: both runs last about as long, so a short
            # burst of the encoder (the machine's clock, other work) is not set against a long run
            enc.append(encoder_only(slide, regions=e2e[-1]["regions"]))
    best = max(e2e, key=lambda run: run["regions"] / run["wall_s"])
    encoder = max(run["regions_per_s"] for run in enc)
    e2e_rate = best["regions"] / best["wall_s"]
    timing = best["timing"]
    return {
        "slide": str(slide),
        "regions": best["regions"],
        "wall_s": round(best["wall_s"], 2),
        "end_to_end_regions_per_s": round(e2e_rate, 1),
        "encoder_only_regions_per_s": round(encoder, 1),
        "ratio": round(e2e_rate / encoder, 3),
        "encode_stage_regions_per_s": round(best["regions"] / timing["encode"], 1),
        "start_and_load_s": round(best["wall_s"] - timing["wall"], 2),
        "outside_encode_s": round(best["wall_s"] - timing["encode"], 2),
        "peak_rss_mb": round(best["peak_rss_mb"]),
        "split": read_split(slide),
    }


# ----------------------------------------------------------------------------- cost against size
def scale_benchmark(large: Path, small: Path, *, workdir: Path | None = None) -> dict[str, Any]:
    """Peak RSS and time outside the encode stage of classify and segment, 100k px vs 4k px, plus info."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for name, slide in (("small", small), ("large", large)):
            for command in ("classify", "segment"):
                run = classify(slide, Path(tmp) / f"{name}-{command}", command=command)
                out[f"{name}_{command}"] = {
                    "regions": run["regions"], "wall_s": round(run["wall_s"], 2),
                    "encode_s": round(run["timing"]["encode"], 2),
                    "outside_encode_s": round(run["wall_s"] - run["timing"]["encode"], 2),
                    "peak_rss_mb": round(run["peak_rss_mb"]),
                }
        info = run_child(xt_slide("info", str(large)))
        out["large_info"] = {"wall_s": round(info["wall_s"], 2), "peak_rss_mb": round(info["peak_rss_mb"])}
    for command in ("classify", "segment"):
        out[f"{command}_peak_rss_ratio"] = round(out[f"large_{command}"]["peak_rss_mb"]
                                                 / out[f"small_{command}"]["peak_rss_mb"], 3)
    return out


def run_all(workdir: Path | None = None, *, repeats: int = 2, side: int = 12_288, progress=None) -> dict[str, Any]:
    """Generate the slides, run both benchmarks, return every figure (what ``xt-slide bench scale`` prints)."""
    say = progress or (lambda text: None)
    with tempfile.TemporaryDirectory(prefix="xt-scale-", dir=workdir) as tmp:
        folder = Path(tmp)
        results: dict[str, Any] = {"machine": machine_info(), "load_before": os.getloadavg()[0]}
        for label, mpp, px in (("0.5 um/px", 0.5, side), ("0.25 um/px", 0.25, 2 * side)):
            say(f"writing a {px} px dense slide at {label}")
            slide = dense_slide(folder / f"dense-{mpp}.tif", px, mpp)
            say(f"classify vs encoder on {label}")
            results[f"throughput {label}"] = throughput_benchmark(slide, repeats=repeats, workdir=folder)
            slide.unlink()
        say("writing the 98,304 x 81,920 px needle-core slide and a 4096 px one")
        large = cores_slide(folder / "cores-98k.tif")
        small = cores_slide(folder / "cores-4k.tif", 4096, 4096)
        say("classify / segment / info at 98k vs 4k px")
        results["scale"] = scale_benchmark(large, small, workdir=folder)
        results["slide_mb"] = round(large.stat().st_size / 2**20)
        results["load_after"] = os.getloadavg()[0]
    return results


def markdown(results: dict[str, Any]) -> str:
    """The README's tables."""
    lines = ["| source | regions | `classify` wall s | end to end regions/s | encoder only regions/s | ratio "
             "| decode / resample ms per region | outside encode s |",
             "|---|---|---|---|---|---|---|---|"]
    for label in ("0.5 um/px", "0.25 um/px"):
        r = results.get(f"throughput {label}")
        if r is None:
            continue
        sp = r["split"]
        lines.append(f"| {label} | {r['regions']} | {r['wall_s']} | {r['end_to_end_regions_per_s']} "
                     f"| {r['encoder_only_regions_per_s']} | {r['ratio']:.2f} "
                     f"| {sp['decode_ms_per_region']:.2f} / {sp['resample_ms_per_region']:.2f} "
                     f"| {r['outside_encode_s']} |")
    s = results.get("scale")
    if s:
        lines += ["", "| slide | command | regions | wall s | outside encode s | peak RSS MB |", "|---|---|---|---|---|---|"]
        for name, label in (("small", "4,096 px"), ("large", "98,304 x 81,920 px")):
            for command in ("classify", "segment"):
                r = s[f"{name}_{command}"]
                lines.append(f"| {label} | {command} | {r['regions']} | {r['wall_s']} | {r['outside_encode_s']} "
                             f"| {r['peak_rss_mb']} |")
        lines.append("")
        lines.append(f"Peak RSS 98k / 4k: classify {s['classify_peak_rss_ratio']:.2f}x, segment "
                     f"{s['segment_peak_rss_ratio']:.2f}x. `xt-slide info` on the 98k slide: "
                     f"{s['large_info']['wall_s']} s, {s['large_info']['peak_rss_mb']} MB.")
    return "\n".join(lines)


__all__ = ["classify", "cores_slide", "dense_slide", "encoder_only", "markdown", "read_split", "run_all",
           "scale_benchmark", "throughput_benchmark"]

if __name__ == "__main__":  # python -m xt_bench.scale: everything, as JSON then the tables
    res = run_all(progress=lambda t: print(t, file=sys.stderr, flush=True))
    print(json.dumps(res, indent=1, default=str))
    print(markdown(res))
