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

import os
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

#: Decoded tiles kept per slide. 48 MiB holds three rows of 256 px tiles across a 20k px wide
#: band of tissue: the rows two consecutive rows of regions share.
DEFAULT_CACHE_BYTES = 48 * 2**20


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

    @property
    def levels(self) -> tuple[int, ...]:
        """The slide levels read directly."""
        return tuple(sorted(self._pages))

    def covers(self, level: int) -> bool:
        return level in self._pages

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 ``(height, width, 3)`` of ``level`` from level pixel (x, y); the box lies inside the level."""
        page = self._pages[level]
        tw, th = page.tilewidth, page.tilelength
        across = -(-page.imagewidth // tw)
        out = np.empty((height, width, 3), dtype=np.uint8)
        for ty in range(y // th, (y + height - 1) // th + 1):
            for tx in range(x // tw, (x + width - 1) // tw + 1):
                tile = self._tile(level, page, ty * across + tx)
                # the part of this tile inside the box, in tile and in output coordinates
                x0, y0 = max(x, tx * tw), max(y, ty * th)
                x1, y1 = min(x + width, (tx + 1) * tw), min(y + height, (ty + 1) * th)
                out[y0 - y : y1 - y, x0 - x : x1 - x] = tile[y0 - ty * th : y1 - ty * th, x0 - tx * tw : x1 - tx * tw]
        return out

    def _tile(self, level: int, page: Any, index: int) -> np.ndarray:
        key = (level, index)
        with self._lock:
            tile = self._cache.get(key)
            if tile is not None:
                self._cache.move_to_end(key)
                return tile
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        if count == 0:  # a tile the scanner never wrote: background
            tile = np.full((page.tilelength, page.tilewidth, 3), 255, dtype=np.uint8)
        else:
            data = os.pread(self._fd, count, offset)
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
