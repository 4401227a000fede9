"""Direct tile reads for tiled TIFF pyramids (SVS, generic and OME-TIFF): the fast read path.

Most slide files are TIFFs whose levels are tiled pages of JPEG (or JPEG 2000, LZW...) tiles.
Reading a strip of regions through a slide library pays for more than the decoding: OpenSlide
paints every tile into a premultiplied ARGB canvas through cairo (27 ms for a 3584 x 448 strip
here against 12 ms through tiffslide and under 6 ms here), tiffslide goes through zarr's
chunk machinery. :class:`TiffTiles` reads the tiles a box needs straight from the file
(``os.pread``: no shared file position, so every reader thread uses the same descriptor),
decodes each with the page's own tifffile codec (the GIL is released while it decodes), and
keeps recently decoded tiles in a small LRU cache, so the tile rows that two rows of regions
share are decoded once.

It takes a level only when it can decode it exactly as the slide library would: a tiled page of
8-bit RGB (or YCbCr JPEG) pixels with the level's exact size. Anything else (stripped pages,
NDPI's JPEG restart markers, MRXS, odd sample formats) is left to the backend.
"""

from __future__ import annotations

import io
import os
import struct
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

#: Decoded tiles kept per slide. 24 MiB holds a row of full 256 px tiles across 30k px of
#: tissue, or of half-size ones (libjpeg's scaled decode) across 120k px: the tile row two
#: consecutive rows of regions share. A bigger cache only raises the peak memory of big slides.
DEFAULT_CACHE_BYTES = 24 * 2**20


class TiffTiles:
    """Tiled pages of a TIFF file matched to a slide's levels by size."""

    def __init__(self, path: str | os.PathLike, level_dimensions: tuple[tuple[int, int], ...],
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        import tifffile

        self.path = os.fspath(path)
        self._tif = tifffile.TiffFile(self.path)
        self._fd = os.open(self.path, os.O_RDONLY)
        self._pages: dict[int, Any] = {}
        candidates = _tiled_pages(self._tif)
        for level, dims in enumerate(level_dimensions):
            page = candidates.get(tuple(dims))
            if page is not None:
                self._pages[level] = page
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = int(cache_bytes)
        self._lock = threading.Lock()
        self._dct_ok: dict[int, bool] = {}

    @property
    def levels(self) -> tuple[int, ...]:
        """The slide levels read directly."""
        return tuple(sorted(self._pages))

    def covers(self, level: int) -> bool:
        return level in self._pages

    def read(self, level: int, x: int, y: int, width: int, height: int, shrink: int = 1) -> np.ndarray:
        """RGB uint8 ``(height, width, 3)`` of ``level`` from level pixel (x, y); the box lies inside the level.

        ``shrink`` k > 1 returns the box k times smaller (``(height // k, width // k, 3)``; the
        box's corner and size must be multiples of k): see :meth:`can_shrink`.
        """
        page = self._pages[level]
        k = shrink
        tw, th = page.tilewidth, page.tilelength
        across = -(-page.imagewidth // tw)
        out = np.empty((height // k, width // k, 3), dtype=np.uint8)
        for ty in range(y // th, (y + height - 1) // th + 1):
            for tx in range(x // tw, (x + width - 1) // tw + 1):
                tile = self._tile(level, page, ty * across + tx, k)
                # the part of this tile inside the box, in tile and in output coordinates (shrunk)
                x0, y0 = max(x, tx * tw), max(y, ty * th)
                x1, y1 = min(x + width, (tx + 1) * tw), min(y + height, (ty + 1) * th)
                out[(y0 - y) // k : (y1 - y) // k, (x0 - x) // k : (x1 - x) // k] = \
                    tile[(y0 - ty * th) // k : (y1 - ty * th) // k, (x0 - tx * tw) // k : (x1 - tx * tw) // k]
        return out

    def can_shrink(self, level: int, k: int) -> bool:
        """Whether ``read(..., shrink=k)`` decodes the level's JPEG tiles at 1/k size in libjpeg.

        libjpeg scales in the DCT domain (1/2, 1/4, 1/8): each 8 x 8 block gives 4 x 4, 2 x 2
        or 1 x 1 pixels, which is both an anti-aliased shrink and a cheaper decode (0.15 ms
        against 0.28 ms for a full decode and a 2x box filter of a 256 px tile here). Checked
        once per level on a real tile against the full decode shrunk by a box filter: where it
        differs by more than two filters do (a colour space libjpeg would guess wrongly), the
        level is read in full.
        """
        if k not in (2, 4, 8) or level not in self._pages:
            return False
        page = self._pages[level]
        if int(page.compression) != 7 or page.tilewidth % k or page.tilelength % k:
            return False
        with self._lock:
            known = self._dct_ok.get(level)
        if known is None:
            known = self._check_dct(page)
            with self._lock:
                self._dct_ok[level] = known
        return known

    def _check_dct(self, page: Any) -> bool:
        from xt_core.slide.resample import shrink_by

        counts = np.asarray(page.databytecounts)
        if not counts.any():
            return False
        index = int(np.argmax(counts))  # the busiest tile: texture, not glass
        data = os.pread(self._fd, int(counts[index]), int(page.dataoffsets[index]))
        try:
            scaled = _jpeg_scaled(data, page, 2).astype(np.int16)
        except Exception:  # Pillow cannot decode this stream: full decodes only
            return False
        full = page.decode(data, index, jpegtables=page.jpegtables)[0]
        box = shrink_by(full.reshape(full.shape[-3:]), 2).astype(np.int16)
        # A wrong colour space is off by tens of grey levels; the two filters differ by about 3
        # on the busiest tissue (libjpeg's cut of the DCT is a sharper low-pass than a box).
        return scaled.shape == box.shape and float(np.abs(scaled - box).mean()) < 8.0

    def _tile(self, level: int, page: Any, index: int, k: int = 1) -> np.ndarray:
        key = (level, index, k)
        with self._lock:
            tile = self._cache.get(key)
            if tile is not None:
                self._cache.move_to_end(key)
                return tile
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        if count == 0:  # a tile the scanner never wrote: background
            tile = np.full((page.tilelength // k, page.tilewidth // k, 3), 255, dtype=np.uint8)
        else:
            data = os.pread(self._fd, count, offset)
            if k > 1 or (int(page.compression) == 7 and _simplejpeg is not None):
                tile = _jpeg_scaled(data, page, k)
            else:
                decoded = page.decode(data, index, jpegtables=page.jpegtables)[0]
                tile = decoded.reshape(decoded.shape[-3:])  # (1, h, w, 3) -> (h, w, 3)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = tile
                self._cache_bytes += tile.nbytes
                while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
                    _, old = self._cache.popitem(last=False)
                    self._cache_bytes -= old.nbytes
        return tile

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
            self._cache_bytes = 0
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tif.close()


#: An Adobe APP14 marker saying "no colour transform": a TIFF whose photometric is RGB stores
#: RGB in its JPEG tiles, which libjpeg would otherwise take for YCbCr (Aperio SVS does this).
_ADOBE_RGB = b"\xff\xee" + struct.pack(">H", 14) + b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 0)


def _jpeg_stream(data: bytes, page: Any) -> bytes:
    """A whole JPEG stream for one tile: the page's shared tables spliced in, RGB tiles marked as such."""
    tables = page.jpegtables
    body = (bytes(tables[2:-2]) + data[2:]) if tables else data[2:]  # the tables' segments, then the tile's
    return b"\xff\xd8" + (_ADOBE_RGB if int(page.photometric) == 2 else b"") + body


def _jpeg_scaled(data: bytes, page: Any, k: int) -> np.ndarray:
    """One JPEG tile decoded at 1/k size (k = 1 full size) by libjpeg-turbo, as RGB uint8.

    simplejpeg where it is installed (a dependency; it calls libjpeg-turbo's own API without
    the GIL, 0.16 ms for a 256 px tile at 1/2 here against 0.24 ms through Pillow's draft
    mode, which parses the JPEG headers in Python), Pillow otherwise. Both run libjpeg-turbo's
    accurate integer IDCT with smooth chroma upsampling, so they give the same pixels (tested),
    and at k = 1 the same pixels as tifffile's codec.
    """
    stream = _jpeg_stream(data, page)
    size = (page.tilewidth // k, page.tilelength // k)
    if _simplejpeg is not None:
        pixels = _simplejpeg.decode_jpeg(stream, colorspace="RGB", min_width=size[0], min_height=size[1])
    else:
        pixels = _pillow_scaled(stream, size)
    if pixels.shape[:2] != (size[1], size[0]):
        raise ValueError(f"libjpeg scaled a tile to {pixels.shape[:2]}, not 1/{k}")
    return pixels


def _pillow_scaled(stream: bytes, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(stream)) as im:
        im.draft("RGB", size)
        return np.asarray(im.convert("RGB"))


try:
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - a platform without its wheel: Pillow decodes
    _simplejpeg = None


def open_tiff_tiles(path: str | os.PathLike, level_dimensions: tuple[tuple[int, int], ...]) -> TiffTiles | None:
    """A :class:`TiffTiles` for the slide's levels it can read exactly, or None (not a TIFF, none usable)."""
    try:
        tiles = TiffTiles(path, level_dimensions)
    except Exception:  # not a TIFF tifffile reads: the backend reads everything, as before
        return None
    if not tiles.levels:
        tiles.close()
        return None
    return tiles


def _tiled_pages(tif: Any) -> dict[tuple[int, int], Any]:
    """Pages (SubIFDs included) that can be read tile by tile exactly, by (width, height)."""
    pages: dict[tuple[int, int], Any] = {}
    for series in tif.series:
        for level in getattr(series, "levels", [series]):
            for page in level.pages:
                if page is None or not hasattr(page, "is_tiled"):
                    continue
                if _readable(page):
                    pages.setdefault((int(page.imagewidth), int(page.imagelength)), page)
    return pages


#: Codecs read directly: none, LZW, JPEG, deflate (2), zstd. JPEG 2000 (Aperio 33003/33005
#: store YCbCr or RGB in ways only the slide libraries sort out) is left to the backend.
_CODECS = {1, 5, 7, 8, 32946, 50000}


def _readable(page: Any) -> bool:
    """An 8-bit, 3-sample, contiguous, tiled page whose codec tifffile decodes on its own."""
    try:
        compression, photometric = int(page.compression), int(page.photometric)
        return bool(
            page.is_tiled and page.imagedepth == 1 and page.samplesperpixel == 3 and page.bitspersample == 8
            and page.planarconfig == 1 and page.tiledepth == 1 and len(page.dataoffsets) > 0
            and compression in _CODECS
            and (photometric == 2 or (photometric == 6 and compression == 7))  # RGB; YCbCr only inside JPEG
            and not page.is_ndpi  # NDPI: restart-marker JPEGs that OpenSlide reads its own way
        )
    except Exception:
        return False
