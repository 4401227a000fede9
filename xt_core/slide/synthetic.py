"""Synthetic whole-slide images at real scale, for tests and benchmarks.

Real 40x slides are 80k-150k px a side and mostly empty glass with a few needle cores of
tissue. :func:`write_synthetic_slide` writes such a file, a JPEG-tiled pyramidal BigTIFF of any
size, tile by tile from a generator: no level is ever held in memory, and every glass tile
reuses one encoded blank tile (about 700 bytes), so a 100k x 100k px slide is a few hundred MB
on disk and is written in seconds. Tissue islands are filled with real H&E tiles, so tissue
detection and models see real texture. The file reads as the same pyramid, with the same pixel
size, in OpenSlide and tiffslide (plain pages marked as reduced images, resolution tags in
pixels per centimetre).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Near-white, as empty glass looks on a scanner (not 255: real glass is never pure white).
GLASS = 242
_DEFAULT_TILES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tiles" / "lc25000_lung"
_TILE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


@dataclass(frozen=True)
class Island:
    """One elliptical piece of tissue (a needle core), in level-0 pixels.

    ``rx`` is the semi-axis along ``angle`` (radians from the x axis), ``ry`` across it.
    """

    cx: float
    cy: float
    rx: float
    ry: float
    angle: float = 0.0

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Boolean mask of the level-0 points (x, y) (broadcast together) inside the island."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        dx, dy = x - self.cx, y - self.cy
        u, v = (dx * c + dy * s) / self.rx, (-dx * s + dy * c) / self.ry
        return u * u + v * v <= 1.0

    def bbox(self) -> tuple[float, float, float, float]:
        """Level-0 (x0, y0, x1, y1) that encloses the island."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        hx = math.hypot(self.rx * c, self.ry * s)
        hy = math.hypot(self.rx * s, self.ry * c)
        return (self.cx - hx, self.cy - hy, self.cx + hx, self.cy + hy)

    @property
    def area(self) -> float:
        return math.pi * self.rx * self.ry


def make_islands(width: int, height: int, count: int = 4, *, seed: int = 0) -> tuple[Island, ...]:
    """``count`` needle cores laid side by side across a ``width`` x ``height`` slide.

    Each core gets its own vertical band of the slide, runs roughly top to bottom (tilted by up
    to 15 degrees), is 50-80% of the slide's height long and 4-7% of that wide, and stays
    inside its band, so cores never overlap. Deterministic for a given ``seed``.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = np.random.default_rng(seed)
    band = width / max(count, 1)
    islands = []
    for k in range(count):
        angle = math.pi / 2 + math.radians(float(rng.uniform(-15, 15)))
        rx = 0.5 * height * float(rng.uniform(0.5, 0.8))
        ry = rx * float(rng.uniform(0.04, 0.07))
        _, _, x1, y1 = Island(0.0, 0.0, rx, ry, angle).bbox()
        scale = min(1.0, 0.45 * band / x1, 0.48 * height / y1)  # inside its band and the slide
        half_y = y1 * scale
        cy = float(np.clip(height * rng.uniform(0.4, 0.6), half_y, height - half_y))
        islands.append(Island(band * (k + 0.5), cy, rx * scale, ry * scale, angle))
    return tuple(islands)


def island_mask(islands: Sequence[Island], width: int, height: int, downsample: float = 64.0) -> np.ndarray:
    """Where the tissue is, as a boolean ``(ceil(height/ds), ceil(width/ds))`` grid (pixel centres)."""
    w, h = math.ceil(width / downsample), math.ceil(height / downsample)
    xs = ((np.arange(w) + 0.5) * downsample)[None, :]
    ys = ((np.arange(h) + 0.5) * downsample)[:, None]
    mask = np.zeros((h, w), dtype=bool)
    for island in islands:
        mask |= island.contains(xs, ys)
    return mask


def tile_pool(tiles: np.ndarray | str | os.PathLike | None, tile: int, *, count: int = 64, seed: int = 0) -> np.ndarray:
    """Real tissue tiles as ``(n, tile, tile, 3)`` uint8.

    ``tiles`` is such an array already (resized if its tiles are another size), a folder of
    tile images (up to ``count`` of them, picked with ``seed``, each resized to ``tile`` px), or
    None for the shared LC25000 lung tiles beside the repository.
    """
    from PIL import Image

    if tiles is None:
        tiles = _DEFAULT_TILES
    if isinstance(tiles, np.ndarray):
        if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8 or len(tiles) == 0:
            raise ValueError(f"tiles must be a non-empty (n, h, w, 3) uint8 array, got {tiles.shape} {tiles.dtype}")
        if tiles.shape[1:3] == (tile, tile):
            return tiles
        return np.stack([np.asarray(Image.fromarray(t).resize((tile, tile), Image.Resampling.BICUBIC)) for t in tiles])
    folder = Path(tiles)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in _TILE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise ValueError(f"{folder}: no tile images (jpg, png, tif) found; pass tiles= an array or a folder of tiles")
    rng = np.random.default_rng(seed)
    chosen = [files[i] for i in sorted(rng.choice(len(files), size=min(count, len(files)), replace=False))]
    pool = []
    for p in chosen:
        with Image.open(p) as im:
            rgb = im.convert("RGB")
            side = min(rgb.size)  # centre square, then to the tile size
            left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
            rgb = rgb.crop((left, top, left + side, top + side)).resize((tile, tile), Image.Resampling.BICUBIC)
            pool.append(np.asarray(rgb))
    return np.stack(pool)


def write_synthetic_slide(
    path: str | os.PathLike,
    width: int,
    height: int,
    *,
    mpp: float = 0.25,
    tile: int = 256,
    levels: Sequence[int] = (1, 4, 16, 64),
    islands: int | Sequence[Island] = 4,
    tiles: np.ndarray | str | os.PathLike | None = None,
    seed: int = 0,
    quality: int = 90,
) -> Path:
    """Write a ``width`` x ``height`` px pyramidal BigTIFF slide of real tissue islands on glass.

    ``levels`` are the downsample factors (the first must be 1); level ``k`` is
    ``ceil(width / levels[k])`` px wide. ``islands`` is a number of needle cores placed by
    :func:`make_islands` (same ``seed``), or the islands themselves; call :func:`make_islands`
    with the same arguments to know where the tissue is. Inside an island each level-0 tile of
    ``tile`` px is one pool tile (see :func:`tile_pool`), flipped or transposed at random; coarser
    levels show the box-filtered pool tiles, so they look like a downsampled level 0. Tiles
    are JPEG (YCbCr 4:2:0, ``quality``) as scanners write them; ``mpp`` goes into the
    resolution tags. Returns the path.
    """
    import imagecodecs
    import tifffile

    if width < 1 or height < 1:
        raise ValueError(f"slide size must be positive, got {width} x {height}")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    factors = [int(f) for f in levels]
    if not factors or factors[0] != 1 or any(b <= a for a, b in zip(factors, factors[1:])):
        raise ValueError(f"levels must start at 1 and increase, got {tuple(levels)}")
    if not mpp > 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    layout = make_islands(width, height, islands, seed=seed) if isinstance(islands, int) else tuple(islands)
    pool = tile_pool(tiles, tile, seed=seed)
    pool = np.concatenate([pool, pool[:, ::-1], pool[:, :, ::-1], pool.transpose(0, 2, 1, 3)])  # more variety

    def encode(pixels: np.ndarray) -> bytes:
        # what tifffile itself writes for JPEG RGB (YCbCr 4:2:0), with optimised Huffman tables:
        # a glass tile is then about 700 bytes instead of 1.7 kB
        return imagecodecs.jpeg_encode(pixels, level=quality, colorspace="RGB", outcolorspace="YCBCR",
                                       subsampling=(2, 2), optimize=True)

    blank = encode(np.full((tile, tile, 3), GLASS, dtype=np.uint8))
    path = Path(path)
    per_cm = 1e4 / mpp
    options = {"dtype": np.uint8, "tile": (tile, tile), "compression": "jpeg", "photometric": "rgb",
               "resolutionunit": "CENTIMETER", "software": "xt_core.slide.synthetic", "metadata": None}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for k, f in enumerate(factors):
            lw, lh = math.ceil(width / f), math.ceil(height / f)
            tif.write(_level_tiles(layout, pool, lw, lh, f, tile, seed, blank, encode), shape=(lh, lw, 3),
                      resolution=(per_cm / f, per_cm / f), subfiletype=0 if k == 0 else 1,
                      description=_description(width, height, mpp) if k == 0 else None, **options)
    return path


def _description(width: int, height: int, mpp: float) -> str:
    """A plain line, not an Aperio-style header (OpenSlide would then parse the file as an SVS):
    the file stays a generic TIFF, which OpenSlide and tiffslide both read as the same pyramid."""
    return f"xt_core synthetic slide {width}x{height} px, {mpp} um/px"


def _level_tiles(
    islands: Sequence[Island], pool: np.ndarray, lw: int, lh: int, f: int, tile: int, seed: int,
    blank: bytes, encode,
) -> Iterator[bytes]:
    """The encoded tiles of one level, row by row; glass tiles are the one ``blank``."""
    small = pool if f == 1 else _shrink(pool, max(1, round(tile / f)))  # pool tiles at this level
    boxes = [i.bbox() for i in islands]
    offsets = (np.arange(tile) + 0.5) * f  # pixel centres of a tile, level-0 px from its corner
    for ty in range(math.ceil(lh / tile)):
        ys = ty * tile * f + offsets
        for tx in range(math.ceil(lw / tile)):
            xs = tx * tile * f + offsets
            near = [i for i, (x0, y0, x1, y1) in zip(islands, boxes)
                    if x0 <= xs[-1] and x1 >= xs[0] and y0 <= ys[-1] and y1 >= ys[0]]
            if not near:
                yield blank
                continue
            inside = _inside(near, xs, ys, lw * f, lh * f)
            if inside is not None and not inside.any():
                yield blank
                continue
            pixels = _texture(small, tx, ty, f, tile, seed, xs, ys)
            if inside is not None:
                np.copyto(pixels, np.uint8(GLASS), where=~inside[..., None])
            yield encode(pixels)


def _inside(near: Sequence[Island], xs: np.ndarray, ys: np.ndarray, x_end: float, y_end: float) -> np.ndarray | None:
    """The tile's pixels inside an island and the level, or None when that is all of them."""
    at_edge = xs[-1] >= x_end or ys[-1] >= y_end
    corners_x, corners_y = xs[[0, -1, 0, -1]], ys[[0, 0, -1, -1]]
    if not at_edge and any(i.contains(corners_x, corners_y).all() for i in near):
        return None  # an ellipse is convex: four corners inside means the whole tile is
    inside = np.zeros((len(ys), len(xs)), dtype=bool)
    for island in near:
        inside |= island.contains(xs[None, :], ys[:, None])
    if at_edge:
        inside &= (ys < y_end)[:, None] & (xs < x_end)[None, :]
    return inside


def _texture(small: np.ndarray, tx: int, ty: int, f: int, tile: int, seed: int,
             xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Level pixels of tile (tx, ty): pool tiles laid on the level-0 tile grid, shrunk by ``f``."""
    if tile % f == 0:  # the tile is exactly an f x f block of shrunk pool tiles
        rows, cols = np.arange(ty * f, ty * f + f), np.arange(tx * f, tx * f + f)
        which = _hash(rows[:, None], cols[None, :], seed) % len(small)
        return small[which].transpose(0, 2, 1, 3, 4).reshape(tile, tile, 3)
    cols, rows = (xs // tile).astype(np.int64), (ys // tile).astype(np.int64)
    which = _hash(rows[:, None], cols[None, :], seed) % len(small)
    n = small.shape[1]
    px = ((xs % tile) * n / tile).astype(np.int64)
    py = ((ys % tile) * n / tile).astype(np.int64)
    return small[which, py[:, None], px[None, :]]


def _hash(a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """A well-mixed non-negative integer per (a, b): the pool tile of each level-0 tile."""
    with np.errstate(over="ignore"):
        h = (a.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (b.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F))
        h ^= np.uint64(seed * 0x165667B19E3779F9 % 2**64)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(29)
    return (h >> np.uint64(1)).astype(np.int64)


def _shrink(pool: np.ndarray, size: int) -> np.ndarray:
    """Pool tiles box-filtered to ``size`` px, as a downsampled level shows them."""
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(t).resize((size, size), Image.Resampling.BOX)) for t in pool])
