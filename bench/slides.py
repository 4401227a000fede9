"""Generated pyramidal slides of real H&E tiles, for the memory and throughput benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xt_core.slide import open_slide

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
