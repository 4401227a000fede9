"""Peak memory of one exact training step: a 4k px slide against a 16k px slide.

Makes pyramidal TIFFs (tifffile, 512 px JPEG tiles, 0.5 um/px, a level per halving down to
<= 1024 px) tiled with real H&E tiles (LC25000 lung, ../shared/data/tiles), so every region
is tissue. Each measurement runs in a fresh Python process: build the default model
(EfficientNet-Lite0 with ImageNet weights, 512 px regions in 256 px chunks at 0.5 um/px,
Transformer-XL context), prepare the slide (tissue mask, grid), then one training step
(``mode=exact``, augmentation on, 8 regions per batch) and an AdamW update. Reported: the
process's peak resident memory (``ru_maxrss``) and its resident memory just before the step.
With ``--plain`` small slides are also trained with a plain backward through every region at
once, to show what the two-pass step saves.

    python bench/run_train_memory_bench.py             # 4096 and 16384 px, Markdown table
    python bench/run_train_memory_bench.py --sizes 2048 4096 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TILES = REPO.parent / "shared" / "data" / "tiles" / "lc25000_lung"
CELL = 256  # px per mosaic cell (a tile resized)
TILE = 512  # TIFF tile size


# ----------------------------------------------------------------------------- slides
def _cells(tiles_dir: Path) -> np.ndarray:
    from PIL import Image

    files = sorted(tiles_dir.glob("*/*.jpeg"))
    if not files:
        raise SystemExit(f"no tiles in {tiles_dir}")
    return np.stack([np.asarray(Image.open(f).convert("RGB").resize((CELL, CELL), Image.BICUBIC)) for f in files])


def _cell(cells: np.ndarray, i: int, j: int) -> np.ndarray:
    k = (i * 7919 + j * 104729 + (i * j) * 31) % len(cells)
    return np.rot90(cells[k], (i + 2 * j) % 4)


def _level_tiles(cells: np.ndarray, size: int, down: int):
    """Tiles of the level with downsample ``down``: each covers (TILE * down)^2 base pixels."""
    n = size // down
    span = TILE * down // CELL  # cells per tile side at base resolution
    for ty in range(0, n, TILE):
        for tx in range(0, n, TILE):
            i0, j0 = ty * down // CELL, tx * down // CELL
            block = np.concatenate([
                np.concatenate([_cell(cells, i0 + a, j0 + b) for b in range(span)], axis=1)
                for a in range(span)], axis=0)
            if down > 1:
                block = block.reshape(TILE, down, TILE, down, 3).mean(axis=(1, 3)).round().astype(np.uint8)
            yield np.ascontiguousarray(block)


def make_slide(path: Path, size: int, tiles_dir: Path, mpp: float = 0.5) -> Path:
    """A ``size`` x ``size`` pyramidal TIFF of real H&E tiles (JPEG, SubIFD levels)."""
    import tifffile

    if path.is_file():
        return path
    cells = _cells(tiles_dir)
    downs = [1]
    while size // (downs[-1] * 2) >= 1024 and size // (downs[-1] * 2) >= TILE:
        downs.append(downs[-1] * 2)
    res = 1e4 / mpp
    tmp = path.with_suffix(".part.tif")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        opts = dict(dtype=np.uint8, tile=(TILE, TILE), compression="jpeg", photometric="rgb",
                    resolutionunit="CENTIMETER")
        tif.write(_level_tiles(cells, size, 1), shape=(size, size, 3), subifds=len(downs) - 1,
                  resolution=(res, res), **opts)
        for d in downs[1:]:
            tif.write(_level_tiles(cells, size, d), shape=(size // d, size // d, 3), subfiletype=1,
                      resolution=(res / d, res / d), **opts)
    tmp.rename(path)
    return path


# ----------------------------------------------------------------------------- measuring
def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(slide_path: str, mode: str, batch_size: int, workers: int, threads: int) -> dict:
    """One step in this process; returns the figures (called in a fresh subprocess)."""
    import torch

    torch.set_num_threads(threads)
    from xt_core.models.config import XTConfig
    from xt_core.models.xt import create_model
    from xt_core.train.augment import AugmentConfig, region_seeds
    from xt_core.train.data import prepare_slide
    from xt_core.train.manifest import ManifestRow
    from xt_core.train.streaming import (
        LossWeights,
        set_train_mode,
        slide_loss,
        train_step,
    )

    torch.manual_seed(0)
    cfg = XTConfig(classes=["lung_n", "lung_aca", "lung_scc"])  # the package defaults: 512/256 px at 0.5 um/px
    model = create_model(cfg, region_weights="package")
    model.region_encoder.to(memory_format=torch.channels_last)
    set_train_mode(model, True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    prepared = prepare_slide(0, ManifestRow(slide=Path(slide_path), label="lung_aca"), cfg, model.tokens_per_side)
    augment = AugmentConfig()
    seeds = region_seeds(0, 1, 0, prepared.indices)
    before, peak_before = _rss_mib(), _peak_mib()
    t0 = time.perf_counter()
    with prepared.open() as slide:
        if mode == "plain":  # every region through the encoder at once, one backward
            batch = next(iter(prepared.source(slide, workers=workers, seeds=seeds, augment=augment)
                              .batches(prepared.n_regions)))[1]
            rows, cols = prepared.rows_cols
            out = model(batch, rows, cols)
            loss, _ = slide_loss(out, prepared.targets(), LossWeights())
            loss.backward()
        else:
            source = prepared.source(slide, workers=workers, seeds=seeds, augment=augment)
            train_step(model, source, prepared.targets(seeds, augment), mode=mode, batch_size=batch_size)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()
    step_s = time.perf_counter() - t0
    w, h = prepared.grid.slide_dimensions
    return {"slide": Path(slide_path).name, "size": f"{w} x {h}", "regions": prepared.n_regions,
            "tokens": prepared.n_regions * model.tokens_per_region, "mode": mode, "batch_size": batch_size,
            "rss_before_step_mib": round(before, 1), "peak_before_step_mib": round(peak_before, 1),
            "peak_rss_mib": round(_peak_mib(), 1), "step_s": round(step_s, 1), "threads": threads}


def _child(slide: Path, mode: str, args) -> dict:
    cmd = [sys.executable, __file__, "--measure", str(slide), "--mode", mode, "--batch-size", str(args.batch_size),
           "--workers", str(args.workers), "--threads", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"measurement failed for {slide} ({mode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384], help="slide sides in px")
    parser.add_argument("--plain", type=int, nargs="*", default=None, metavar="SIZE",
                        help="also a plain full backward on slides of these sides (e.g. 1024 2048)")
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("XT_CACHE_DIR", Path.home() / ".cache" / "napari-xt")) / "bench")
    parser.add_argument("--tiles", type=Path, default=TILES)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the measuring process")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="exact", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.mode, args.batch_size, args.workers, args.threads)))
        return 0

    rows = []
    for size in args.sizes:
        slide = make_slide(args.data_dir / f"lc25000-mosaic-{size}.tif", size, args.tiles)
        rows.append(_child(slide, "exact", args))
    for size in args.plain or []:
        slide = make_slide(args.data_dir / f"lc25000-mosaic-{size}.tif", size, args.tiles)
        rows.append(_child(slide, "plain", args))
    exact = [r for r in rows if r["mode"] == "exact"]
    ratio = exact[-1]["peak_rss_mib"] / exact[0]["peak_rss_mib"] if len(exact) > 1 else None
    if args.json:
        print(json.dumps({"rows": rows, "ratio": ratio}))
        return 0
    print("| slide (0.5 um/px) | regions (512 px) | step | RSS before step (MiB) | peak RSS (MiB) | step time (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        step = "two-pass exact" if r["mode"] == "exact" else "plain backward"
        print(f"| {r['size']} px | {r['regions']} | {step} | {r['rss_before_step_mib']:.0f} | "
              f"{r['peak_rss_mib']:.0f} | {r['step_s']:.0f} |")
    if ratio is not None:
        print(f"\npeak RSS {exact[-1]['size']} / {exact[0]['size']}: {ratio:.2f} (target <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
