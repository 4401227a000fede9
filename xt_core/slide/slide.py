"""The Slide type: one API over every backend, in level-0 coordinates, RGB uint8 out."""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from xt_core.errors import MissingMppError, SlideError
from xt_core.slide.backend import SlideBackend, SlideMetadata
from xt_core.slide.resample import lanczos_margin, shrink_by, shrink_lanczos, whole_factor
from xt_core.slide.tiles import open_tiff_tiles

#: Backends whose tiled TIFF levels :class:`~xt_core.slide.tiles.TiffTiles` reads as they do.
_DIRECT_TILE_BACKENDS = ("openslide", "tiffslide")
#: Colour outside the scanned area and of padding: white, as glass looks on a scanner.
BACKGROUND = 255
#: A level whose pixel size is within this relative tolerance of the target is read as is.
MPP_TOLERANCE = 0.02
#: Thumbnails and resampled reads are made band by band so a one-level slide never
#: needs its whole full-resolution image in memory.
_BAND_ROWS = 256
#: Thumbnails box-reduce first and leave at most this much shrinking to Lanczos (see resample).
_THUMBNAIL_GAP = 3.0


class Slide:
    """An open whole-slide image.

    Geometry follows OpenSlide's conventions: ``level_dimensions`` are (width, height),
    locations are level-0 (x, y) pixels, and every read returns RGB uint8 ``(h, w, 3)``
    with white wherever the request leaves the slide.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        backend_cls: type[SlideBackend],
        handle: SlideBackend,
        mpp: float | tuple[float, float] | None = None,
        force_mpp: bool = False,
    ) -> None:
        self.path = Path(path)
        self._backend_cls = backend_cls
        self._meta: SlideMetadata = handle.metadata()
        self._handles: list[SlideBackend] = [handle]
        self._lock = threading.Lock()
        self._local = threading.local()
        self._local.handle = handle
        self._closed = False
        # one handle for all threads where the backend allows it (some decide per file, e.g. image)
        self._shared_handle = bool(handle.thread_safe)
        # Tiled TIFF levels are read straight from the file (xt_core.slide.tiles), the rest by the backend.
        self._tiles = (open_tiff_tiles(self.path, self._meta.level_dimensions)
                       if backend_cls.name in _DIRECT_TILE_BACKENDS and os.environ.get("XT_DIRECT_TILES") != "0"
                       else None)
        user_mpp = _as_mpp_pair(mpp)
        if user_mpp is not None and (force_mpp or self._meta.mpp is None):
            self.mpp, self.mpp_source = user_mpp, "user"
        elif self._meta.mpp is not None:
            self.mpp, self.mpp_source = self._meta.mpp, "header"
        else:  # "none (<why>)" when the header's value was not a microscope's (see slide.mpp)
            rejected = self._meta.mpp_rejected
            self.mpp, self.mpp_source = None, (f"none ({rejected})" if rejected else None)

    # ------------------------------------------------------------------ metadata
    @property
    def name(self) -> str:
        """File name without its extension (``.ome.tiff`` counts as one extension)."""
        return file_stem(self.path)

    @property
    def backend(self) -> str:
        """The reader library that opened this slide."""
        return self._backend_cls.name

    @property
    def level_count(self) -> int:
        return len(self._meta.level_dimensions)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._meta.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._meta.level_downsamples

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height)."""
        return self._meta.level_dimensions[0]

    @property
    def vendor(self) -> str | None:
        return self._meta.vendor

    @property
    def objective_power(self) -> float | None:
        return self._meta.objective_power

    @property
    def associated_images(self) -> tuple[str, ...]:
        """Names of the label, macro, thumbnail... images stored beside the pyramid."""
        return self._meta.associated_images

    @property
    def properties(self) -> dict[str, str]:
        """Raw header properties as the backend reports them."""
        return dict(self._meta.properties)

    def require_mpp(self) -> tuple[float, float]:
        """The pixel size, or :class:`MissingMppError` telling the user to pass ``mpp=``."""
        if self.mpp is None:
            raise MissingMppError(self.path)
        return self.mpp

    def level_mpp(self, level: int) -> tuple[float, float]:
        """Microns per pixel of ``level`` (needs the slide's mpp)."""
        mx, my = self.require_mpp()
        ds = self.level_downsamples[level]
        return (mx * ds, my * ds)

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample`` (within tolerance)."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + MPP_TOLERANCE):
                best = level
        return best

    def info(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``xt-slide info`` prints)."""
        return {
            "path": str(self.path),
            "backend": self.backend,
            "vendor": self.vendor,
            "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "mpp": list(self.mpp) if self.mpp else None,
            "mpp_source": self.mpp_source,
            "objective_power": self.objective_power,
            "associated_images": list(self.associated_images),
        }

    # ------------------------------------------------------------------ reading
    def read_region(
        self, location: tuple[float, float], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """RGB uint8 ``(height, width, 3)`` pixels of ``level``.

        ``location`` is the top-left corner in level-0 pixels (rounded to the nearest pixel
        of ``level``); ``size`` is (width, height) in level pixels. Parts outside the slide
        are white.
        """
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} out of range 0..{self.level_count - 1}")
        ds = self.level_downsamples[level]
        x, y = round(location[0] / ds), round(location[1] / ds)
        return self._read_level_padded(level, x, y, int(size[0]), int(size[1]))

    def read_region_shrunk(self, location: tuple[float, float], level: int, size: tuple[int, int],
                           k: int) -> np.ndarray:
        """``read_region(location, level, size)`` shrunk k times by a box filter, ``(h // k, w // k, 3)``.

        Where the level is a JPEG-tiled TIFF page, libjpeg decodes its tiles at 1/k size
        directly (:meth:`~xt_core.slide.tiles.TiffTiles.can_shrink`): a fraction of the cost of
        a full decode and a box filter, and within a grey level of it on average. ``size`` must
        be a multiple of k.
        """
        if k == 1:
            return self.read_region(location, level, size)
        ds = self.level_downsamples[level]
        x, y = round(location[0] / ds), round(location[1] / ds)
        w, h = int(size[0]), int(size[1])
        lw, lh = self.level_dimensions[level]
        inside = x >= 0 and y >= 0 and x + w <= lw and y + h <= lh
        tiles = self._tiles
        if inside and tiles is not None and not (x | y | w | h) % k and tiles.can_shrink(level, k):
            return self._read_backend(level, x, y, w, h, shrink=k)
        return shrink_by(self._read_level_padded(level, x, y, w, h), k)

    def read_region_at_mpp(
        self,
        location: tuple[float, float],
        size: tuple[int, int],
        mpp: float,
        tolerance: float = MPP_TOLERANCE,
    ) -> np.ndarray:
        """Pixels at a physical resolution: ``size`` (w, h) pixels of ``mpp`` microns each.

        ``location`` is the top-left corner in level-0 pixels (may be fractional). The
        finest level that is not finer than needed is read. Within ``tolerance`` of that
        level's pixel size, or of a whole multiple k of it, its pixels are taken as they are or
        shrunk k times by a box filter (see :mod:`xt_core.slide.resample`); otherwise they are
        truly resampled (Lanczos, with anti-aliasing when shrinking), not snapped.
        """
        mx, my = self.require_mpp()
        sx, sy = mpp / mx, mpp / my  # level-0 pixels per output pixel
        level = self.best_level_for_downsample(min(sx, sy))
        ds = self.level_downsamples[level]
        w, h = int(size[0]), int(size[1])
        k = whole_factor(sx / ds, tolerance)
        if k is not None and whole_factor(sy / ds, tolerance) == k:
            return self.read_region_shrunk(location, level, (w * k, h * k), k)
        box = (
            location[0] / ds,
            location[1] / ds,
            (location[0] + w * sx) / ds,
            (location[1] + h * sy) / ds,
        )
        return self._read_level_resampled(level, box, (w, h))

    def get_thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """The whole slide, its longer side ``max_size`` pixels (aspect kept), RGB uint8."""
        w0, h0 = self.dimensions
        scale = max(w0, h0) / max_size
        out_w, out_h = max(1, round(w0 / scale)), max(1, round(h0 / scale))
        level = self.best_level_for_downsample(scale)
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        sx, sy = w0 / out_w / ds, h0 / out_h / ds  # level pixels per thumbnail pixel
        if abs(sx - 1) < 1e-9 and abs(sy - 1) < 1e-9:
            return self._read_level_padded(level, 0, 0, lw, lh)
        bands = []
        for r0 in range(0, out_h, _BAND_ROWS):
            r1 = min(out_h, r0 + _BAND_ROWS)
            box = (0.0, r0 * sy, out_w * sx, r1 * sy)
            bands.append(self._read_level_resampled(level, box, (out_w, r1 - r0), reducing_gap=_THUMBNAIL_GAP))
        return np.concatenate(bands, axis=0)

    def read_associated(self, name: str) -> np.ndarray:
        """An associated image (``label``, ``macro``, ``thumbnail``...) as RGB uint8."""
        if name not in self.associated_images:
            known = ", ".join(self.associated_images) or "none"
            raise KeyError(f"{self.path}: no associated image {name!r} (has: {known})")
        return self._handle().read_associated(name)

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self._closed:
            raise SlideError(self.path, "the slide is closed")

    def _handle(self) -> SlideBackend:
        """This thread's backend handle (one shared handle when the backend allows it)."""
        self._check_open()
        if self._shared_handle:
            return self._handles[0]
        handle = getattr(self._local, "handle", None)
        if handle is None:
            handle = self._backend_cls(self.path)
            self._local.handle = handle
            with self._lock:
                self._handles.append(handle)
        return handle

    def _read_level_padded(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, got {w}x{h}")
        lw, lh = self.level_dimensions[level]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x0 == x and y0 == y and x1 == x + w and y1 == y + h:
            return self._read_backend(level, x, y, w, h)
        out = np.full((h, w, 3), BACKGROUND, dtype=np.uint8)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._read_backend(level, x0, y0, x1 - x0, y1 - y0)
        return out

    def _read_backend(self, level: int, x: int, y: int, w: int, h: int, shrink: int = 1) -> np.ndarray:
        """The level box from the direct tiles where they cover the level (``shrink`` > 1: decoded
        k times smaller, see :meth:`read_region_shrunk`), else from the backend handle."""
        try:
            if self._tiles is not None and self._tiles.covers(level):
                self._check_open()
                pixels = self._tiles.read(level, x, y, w, h, shrink=shrink)
            else:
                pixels = self._handle().read_level(level, x, y, w, h)
        except SlideError:
            raise
        except Exception as exc:  # reader libraries raise anything on corrupt tiles
            raise SlideError(
                self.path, f"cannot read level {level} at ({x}, {y}) size {w}x{h}: {_reason(exc)}"
            ) from exc
        if pixels.shape != (h // shrink, w // shrink, 3):
            raise SlideError(self.path, f"reader returned {pixels.shape} for a {w}x{h} read")
        return pixels

    def _read_level_resampled(
        self, level: int, box: tuple[float, float, float, float], size: tuple[int, int],
        reducing_gap: float | None = None,
    ) -> np.ndarray:
        """Resample the fractional level-pixel ``box`` to ``size`` with Lanczos.

        A margin of filter support is read around the box so that edges are filtered
        with their true neighbours (or white outside the slide), not clamped.
        """
        x0, y0, x1, y1 = box
        margin = lanczos_margin(max((x1 - x0) / size[0], (y1 - y0) / size[1]))
        rx0, ry0 = math.floor(x0) - margin, math.floor(y0) - margin
        rx1, ry1 = math.ceil(x1) + margin, math.ceil(y1) + margin
        src = self._read_level_padded(level, rx0, ry0, rx1 - rx0, ry1 - ry0)
        return shrink_lanczos(src, (x0 - rx0, y0 - ry0, x1 - rx0, y1 - ry0), size, reducing_gap=reducing_gap)

    def close(self) -> None:
        """Close every handle this slide opened (all threads)."""
        with self._lock:
            for handle in self._handles:
                handle.close()
            self._handles.clear()
            if self._tiles is not None:
                self._tiles.close()
                self._tiles = None
            self._closed = True

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"Slide({str(self.path)!r}, backend={self.backend!r}, {w}x{h}, levels={self.level_count}, mpp={self.mpp})"

    def __getstate__(self) -> dict:
        raise TypeError("a Slide holds open file handles; pass its path to other processes")


def _as_mpp_pair(mpp: float | tuple[float, float] | None) -> tuple[float, float] | None:
    if mpp is None:
        return None
    pair = (float(mpp), float(mpp)) if isinstance(mpp, (int, float)) else (float(mpp[0]), float(mpp[1]))
    if not all(math.isfinite(v) and v > 0 for v in pair):
        raise ValueError(f"mpp must be a positive number of microns per pixel, got {mpp!r}")
    return pair


def _reason(exc: BaseException) -> str:
    """One line from a reader library's exception."""
    text = str(exc).strip().splitlines()
    return text[0] if text and text[0] else type(exc).__name__


def file_stem(path: str | os.PathLike) -> str:
    """A slide file's name without its extension, ``.ome.tif(f)`` counting as one: the name its
    outputs and layers take."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem
