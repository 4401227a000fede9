"""Throughput figures, measured (never asserted in tests): what the README reports.

``read_benchmark`` times reading and decoding the regions of one slide through
:func:`xt_core.stream.iter_region_batches` with 1 and 2 workers against the plain loop a
lab would write first: one OpenSlide handle, ``read_region`` region after region.

``model_benchmark`` times :func:`xt_core.inference.predict_slide` end to end (reading
overlapped with encoding) against the same region encoder on in-memory batches, the compute
limit; ``memory_benchmark`` measures peak memory on generated pyramidal slides of growing
size (:func:`make_bench_slide`), each in a fresh process.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from xt_core.slide import open_slide
from xt_core.stream import iter_region_batches
from xt_core.tokenize import RegionGrid, make_region_grid


@dataclass
class ReadBenchmark:
    slide: str
    backend: str
    regions: int
    region_size: int
    target_mpp: float | None
    batch_size: int
    passes: int
    regions_per_s: dict[str, float] = field(default_factory=dict)
    machine: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def machine_info() -> dict[str, object]:
    """What the figures were measured on."""
    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


def read_benchmark(
    path: str,
    *,
    region_size: int = 512,
    target_mpp: float | None = None,
    batch_size: int = 8,
    workers: tuple[int, ...] = (1, 2),
    min_seconds: float = 3.0,
    backend: str = "auto",
    mpp: float | None = None,
) -> ReadBenchmark:
    """Regions per second, read and decoded, for a sequential OpenSlide loop and our stream.

    Every configuration reads the same regions for the same number of whole passes
    (enough for the slowest to run ``min_seconds``); a warm-up pass first fills the OS
    file cache so that disk speed does not favour whichever runs later.
    """
    slide = open_slide(path, backend=backend, mpp=mpp)
    grid = make_region_grid(slide, target_mpp=target_mpp, region_size=region_size, chunk_size=region_size)
    indices = np.arange(grid.n_regions)

    def ours(n_workers: int) -> None:
        for _ in iter_region_batches(slide, grid, batch_size=batch_size, workers=n_workers, indices=indices):
            pass

    runners = {"sequential_openslide": lambda: _sequential_openslide(path, grid, indices)}
    for w in workers:
        runners[f"stream_{w}_workers"] = lambda w=w: ours(w)

    for run in runners.values():  # warm-up
        run()
    t0 = time.perf_counter()
    runners["sequential_openslide"]()
    one_pass = max(time.perf_counter() - t0, 1e-6)
    passes = max(1, int(np.ceil(min_seconds / one_pass)))

    result = ReadBenchmark(
        slide=str(path), backend=slide.backend, regions=len(indices), region_size=region_size,
        target_mpp=target_mpp, batch_size=batch_size, passes=passes, machine=machine_info(),
    )
    for name, run in runners.items():
        t0 = time.perf_counter()
        for _ in range(passes):
            run()
        elapsed = time.perf_counter() - t0
        result.regions_per_s[name] = round(passes * len(indices) / elapsed, 2)
    slide.close()
    return result


def _sequential_openslide(path: str, grid: RegionGrid, indices: np.ndarray) -> None:
    """The baseline: the loop most scripts start with."""
    import openslide

    level = grid.read_level if grid.read_level is not None else 0
    with openslide.OpenSlide(str(path)) as osr:
        for i in indices:
            region = grid.region(int(i))
            img = osr.read_region((int(region.box[0]), int(region.box[1])), level,
                                  (grid.region_size, grid.region_size))
            np.asarray(img.convert("RGB"))


# --------------------------------------------------------------------------------------
# Model throughput: end to end (read + encode, streamed) against the encoder alone.

STANDIN_NOTE = ("untrained stand-in (the bundled default model is not installed): EfficientNet-Lite0 with "
                "ImageNet weights at 512 px regions / 256 px chunks, 0.5 um/px, random Transformer-XL context; "
                "the same compute as a real model of that configuration")


def standin_model():
    """The model the bench uses while no default model is bundled: real encoder weights, random rest."""
    import torch

    from xt_core.models.config import XTConfig
    from xt_core.models.region import efficientnet_lite0_weights_path
    from xt_core.models.xt import create_model

    torch.manual_seed(0)
    config = XTConfig(classes=["a", "b", "c"], region_encoder="efficientnet_lite0", region_size=512, chunk_size=256,
                      target_mpp=0.5, token_pool=2, context_encoder="transformer_xl", context_dim=192,
                      name="bench-standin")
    return create_model(config, region_weights=str(efficientnet_lite0_weights_path())).eval()


def load_bench_model(model=None):
    """``(model, description)``: a checkpoint path, an XTModel, or None for the default model.

    None means ``xt_core.models.default.default_model()`` where its checkpoint is installed,
    else :func:`standin_model` (and the description says so).
    """
    from xt_core.models.xt import XTModel

    if isinstance(model, XTModel):
        return model.eval(), f"given model {model.config.name!r}"
    if model is not None:
        from xt_core.models.checkpoint import load_model

        return load_model(model), f"checkpoint {model}"
    try:
        from xt_core.models import default  # the bundled model, where this version has one
    except ModuleNotFoundError as exc:
        if exc.name != "xt_core.models.default":
            raise
        return standin_model(), STANDIN_NOTE
    if default.default_model_path() is None:  # an install without the checkpoint files
        return standin_model(), STANDIN_NOTE
    return default.default_model().eval(), f"bundled default model {default.DEFAULT_MODEL_NAME}"


def _peak_rss_mb() -> float:
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _cpu_times() -> tuple[float, float]:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


def encoder_benchmark(model, images, *, batches: int, warmup: int = 2) -> dict[str, float]:
    """Regions/s of ``model.encode_regions`` alone on one in-memory uint8 batch, ``batches`` times.

    Returns ``regions_per_s`` (over all batches), ``best_batch_regions_per_s`` and the CPU
    user/system seconds spent.
    """
    import torch

    n = int(images.shape[0])
    with torch.inference_mode():
        for _ in range(warmup):
            model.encode_regions(images).float().cpu()
        user0, sys0 = _cpu_times()
        times = []
        t0 = time.perf_counter()
        for _ in range(batches):
            t1 = time.perf_counter()
            model.encode_regions(images).float().cpu()
            times.append(time.perf_counter() - t1)
        elapsed = time.perf_counter() - t0
        user1, sys1 = _cpu_times()
    return {
        "regions_per_s": batches * n / elapsed,
        "best_batch_regions_per_s": n / min(times),
        "seconds": elapsed,
        "cpu_user_s": user1 - user0,
        "cpu_sys_s": sys1 - sys0,
    }


def model_benchmark(
    slide_path: str,
    model=None,
    *,
    batch_size: int = 8,
    workers: int = 2,
    repeats: int = 3,
    backend: str = "auto",
    mpp: float | None = None,
    device: str = "cpu",
) -> dict:
    """End-to-end regions/s of :func:`~xt_core.inference.predict_slide` against the encoder alone.

    * ``end_to_end_regions_per_s``: regions encoded / the wall time of predict_slide's encode
      stage, in which ``workers`` threads read and decode the regions while the model encodes
      (the first batch's read is in it; tissue detection, context encoder and heads are not:
      ``end_to_end_total_regions_per_s`` counts the whole call).
    * ``encoder_only_regions_per_s``: the same model's ``encode_regions`` (region encoder,
      token pool, projection: exactly the encode stage's compute), same batch size,
      channels-last, on a batch of the slide's own regions already in memory as uint8, after
      a warm-up: the compute limit of this machine.
    * ``ratio``: the first over the second.

    Both are measured ``repeats`` times, alternately, and the best of each is kept (other work
    on the machine only ever slows a run down). A slide without tissue is benched on all
    regions. ``peak_rss_mb`` is the process's peak resident memory.
    """
    import torch

    from xt_core import runtime
    from xt_core.inference import predict_slide, resolve_device
    from xt_core.tissue import tissue_mask

    applied = runtime.configure()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    model, description = load_bench_model(model)
    dev = resolve_device(device)
    slide = open_slide(slide_path, backend=backend, mpp=mpp)
    try:
        cfg = model.config
        tissue = tissue_mask(slide)
        grid = make_region_grid(slide, target_mpp=cfg.target_mpp, region_size=cfg.region_size,
                                chunk_size=cfg.chunk_size, tissue=tissue)
        threshold = cfg.tissue_threshold
        if len(grid.tissue_indices(threshold)) == 0:
            threshold = 0.0  # no tissue found: bench on every region
        indices = grid.tissue_indices(threshold)

        # The encoder's input: the slide's first regions, read once, as predict_slide gets them.
        first = next(iter_region_batches(slide, grid, batch_size=batch_size, workers=0,
                                         indices=indices[:batch_size], as_tensor=True))
        images = first.images
        if images.shape[0] < batch_size:
            reps = -(-batch_size // images.shape[0])
            images = torch.cat([images] * reps)[:batch_size].contiguous(memory_format=torch.channels_last)
        model = model.to(dev).eval()
        model.region_encoder.to(memory_format=torch.channels_last)
        images = images.to(dev)
        batches = max(2, -(-len(indices) // batch_size))
        with torch.inference_mode():  # first calls build the kernels' plans: not part of any figure
            for _ in range(2):
                model.encode_regions(images)

        e2e_runs, enc_runs = [], []
        for _ in range(max(1, repeats)):
            user0, sys0 = _cpu_times()
            result = predict_slide(model, slide, batch_size=batch_size, workers=workers, device=dev,
                                   tissue_threshold=threshold, tissue=tissue)
            user1, sys1 = _cpu_times()
            t = result.timings
            e2e_runs.append({
                "regions_per_s": result.regions_tissue / t["encode"],
                "encode_s": t["encode"], "read_wait_s": t["read_wait"], "total_s": t["total"],
                "cpu_user_s": user1 - user0, "cpu_sys_s": sys1 - sys0,
            })
            enc_runs.append(encoder_benchmark(model, images, batches=batches, warmup=1))
        e2e = max(e2e_runs, key=lambda r: r["regions_per_s"])
        enc = max(enc_runs, key=lambda r: r["regions_per_s"])
    finally:
        slide.close()
    e2e_rate, enc_rate = e2e["regions_per_s"], enc["regions_per_s"]
    return {
        "slide": str(slide_path),
        "model": description,
        "region_encoder": model.config.region_encoder,
        "region_size": model.config.region_size,
        "chunk_size": model.config.chunk_size,
        "target_mpp": model.config.target_mpp,
        "regions": int(len(indices)),
        "regions_total": int(grid.n_regions),
        "tissue_threshold": threshold,
        "batch_size": batch_size,
        "workers": workers,
        "repeats": max(1, repeats),
        "device": str(dev),
        "end_to_end_regions_per_s": round(e2e_rate, 2),
        "encoder_only_regions_per_s": round(enc_rate, 2),
        "ratio": round(e2e_rate / enc_rate, 3),
        "peak_rss_mb": _peak_rss_mb(),
        "end_to_end_total_regions_per_s": round(len(indices) / e2e["total_s"], 2),
        "end_to_end": {k: round(v, 3) for k, v in e2e.items()},
        "end_to_end_all_regions_per_s": [round(r["regions_per_s"], 2) for r in e2e_runs],
        "encoder_only": {k: round(v, 3) for k, v in enc.items()},
        "encoder_only_all_regions_per_s": [round(r["regions_per_s"], 2) for r in enc_runs],
        "channels_last": bool(model.region_encoder.channels_last),
        "runtime": applied,
        "load_average": [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
        "machine": machine_info(),
        "measured": ("end_to_end_regions_per_s = regions / wall time of predict_slide's encode stage (reading "
                     "overlapped, first batch's read included; tissue detection, context and heads excluded: "
                     "end_to_end_total_regions_per_s counts the whole call); best of `repeats` runs, as is "
                     "encoder_only_regions_per_s"),
    }


# --------------------------------------------------------------------------------------
# Memory against slide size: generated pyramidal slides of real tiles, one fresh process each.

TILE = 512
_SHARED_TILES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tiles"
_TILE_SETS = ("kather2016", "nct_crc_he", "lc25000_lung")
_TILE_SUFFIXES = {".tif", ".tiff", ".jpg", ".jpeg", ".png"}


def tile_pool(count: int = 48, *, seed: int = 0, tiles_dir: str | os.PathLike | None = None) -> np.ndarray:
    """``count`` real H&E tiles of 512 px, ``(count, 512, 512, 3)`` uint8.

    Each is a 2 x 2 mosaic of real tiles (kather2016, nct_crc_he, lc25000_lung from
    ``../shared/data/tiles``, each resized to 256 px), randomly flipped and rotated. Where the
    shared data is absent, 512 px crops of the sample slide's tissue are used instead.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(tiles_dir) if tiles_dir is not None else _SHARED_TILES
    files = sorted(p for name in _TILE_SETS if (root / name).is_dir()
                   for p in (root / name).rglob("*") if p.suffix.lower() in _TILE_SUFFIXES)
    if not files:
        return _sample_slide_pool(count, rng)
    half = TILE // 2
    sources = []
    for p in files:
        with Image.open(p) as im:
            sources.append(np.asarray(im.convert("RGB").resize((half, half), Image.BILINEAR)))
    pool = np.empty((count, TILE, TILE, 3), dtype=np.uint8)
    for k in range(count):
        for q in range(4):
            piece = np.rot90(sources[int(rng.integers(len(sources)))], int(rng.integers(4)))
            if rng.integers(2):
                piece = piece[:, ::-1]
            r, c = divmod(q, 2)
            pool[k, r * half : (r + 1) * half, c * half : (c + 1) * half] = piece
    return pool


def _sample_slide_pool(count: int, rng: np.random.Generator) -> np.ndarray:
    from xt_core.sample_data import sample_slide_path

    with open_slide(sample_slide_path()) as slide:
        w, h = slide.dimensions
        crops = []
        for y in range(0, h - TILE + 1, TILE // 2):
            for x in range(0, w - TILE + 1, TILE // 2):
                crop = slide.read_region((x, y), 0, (TILE, TILE))
                if crop.mean() < 215:  # mostly tissue
                    crops.append(crop)
    if not crops:
        raise RuntimeError("no tissue crops in the sample slide to build a test slide from")
    picks = rng.integers(len(crops), size=count)
    return np.stack([np.rot90(crops[int(i)], int(rng.integers(4))) for i in picks])


def pyramid_levels(size: int, tile: int = TILE) -> int:
    """Levels of a generated slide: halving while the next level is still a tile or more."""
    levels = 1
    while (size >> levels) >= tile:
        levels += 1
    return levels


def make_bench_slide(
    path: str | os.PathLike,
    size: int,
    *,
    mpp: float = 0.5,
    pool: np.ndarray | None = None,
    tissue_fraction: float = 0.7,
    quality: int = 90,
    seed: int = 0,
) -> Path:
    """Write a square pyramidal TIFF of ``size`` px of real H&E tiles, in bounded memory.

    Tiled 512 px, JPEG (YCbCr 4:2:0, as scanners write), pyramid levels halving down to
    512 px in SubIFDs, pixel size ``mpp``. Tissue fills an ellipse of about
    ``tissue_fraction`` of the slide, glass (white) the rest. Tiles are generated one at a
    time (each level's from 2^k-downsampled pool tiles, exactly the box-filtered level 0), so
    a 32k px slide is written with ~100 MB of memory.
    """
    import tifffile

    if size < TILE or size % TILE:
        raise ValueError(f"size must be a positive multiple of {TILE}, got {size}")
    rng = np.random.default_rng(seed)
    pool = tile_pool(seed=seed) if pool is None else pool
    white = np.full((1, TILE, TILE, 3), 255, dtype=np.uint8)
    tiles = np.concatenate([pool, white])
    blank = len(tiles) - 1
    n = size // TILE
    centre = (np.arange(n) + 0.5) / n - 0.5
    radius = np.sqrt(tissue_fraction / np.pi)
    inside = (centre[:, None] ** 2 + centre[None, :] ** 2) <= radius**2
    which = np.where(inside, rng.integers(len(pool), size=(n, n)), blank)

    levels = pyramid_levels(size)
    path = Path(path)
    resolution = 1e4 / mpp  # pixels per cm
    options = dict(tile=(TILE, TILE), compression="jpeg", compressionargs={"level": quality},
                   photometric="rgb", resolutionunit="CENTIMETER")

    def level_tiles(k: int):
        f = 1 << k
        s = TILE // f
        small = tiles if k == 0 else tiles.reshape(len(tiles), s, f, s, f, 3).mean(axis=(2, 4)).round().astype(np.uint8)
        side = -(-(size >> k) // TILE)
        for i in range(side):
            for j in range(side):
                block = np.full((f, f), blank)
                part = which[i * f : (i + 1) * f, j * f : (j + 1) * f]
                block[: part.shape[0], : part.shape[1]] = part
                yield small[block].transpose(0, 2, 1, 3, 4).reshape(TILE, TILE, 3)

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(level_tiles(0), shape=(size, size, 3), dtype=np.uint8, subifds=levels - 1,
                  resolution=(resolution, resolution), **options)
        for k in range(1, levels):
            s = size >> k
            tif.write(level_tiles(k), shape=(s, s, 3), dtype=np.uint8, subfiletype=1,
                      resolution=(resolution / 2**k, resolution / 2**k), **options)
    return path


def memory_benchmark(
    sizes: tuple[int, ...] = (4096, 16384, 32768),
    *,
    model: str | None = None,
    batch_size: int = 8,
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
            cmd = [sys.executable, "-m", "xt_core.bench", "_memory_child", str(slide),
                   "--batch-size", str(batch_size), "--workers", str(workers), "--backend", backend]
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
    from xt_core.errors import SlideError
    from xt_core.inference import predict_slide

    parser = argparse.ArgumentParser(prog="python -m xt_core.bench _memory_child")
    parser.add_argument("slide")
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--target-mpp", type=float, default=None)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args(argv)
    applied = runtime.configure()
    model, description = load_bench_model(args.model)
    if args.target_mpp is not None:
        model.config.target_mpp = args.target_mpp
    rss_model = psutil.Process().memory_info().rss / 2**20
    peak_model = _peak_rss_mb()
    with open_slide(args.slide, backend=args.backend) as slide:
        peak_open = _peak_rss_mb()
        try:
            result = predict_slide(model, slide, batch_size=args.batch_size, workers=args.workers, device="cpu")
        except SlideError:  # no tissue found (a tiny slide): measure on every region
            result = predict_slide(model, slide, batch_size=args.batch_size, workers=args.workers, device="cpu",
                                   tissue_threshold=0.0)
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


if __name__ == "__main__":  # python -m xt_core.bench _memory_child SLIDE ...
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "_memory_child":
        sys.exit(_memory_child(sys.argv[2:]))
    sys.exit("usage: xt-slide bench ... (this module's entry point is for the memory bench's child runs)")
