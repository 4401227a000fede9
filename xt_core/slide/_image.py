"""Plain images, one level: TIFFs read lazily with tifffile, PNG/JPEG/BMP decoded whole by Pillow.

The last resort of ``open_slide(backend="auto")`` for TIFFs neither slide library opens, and the
reader of PNG and JPEG. Opening decodes nothing of a TIFF: a read decodes only the tiles or
strips it touches, so a 100k px BigTIFF opens and reads in bounded memory. Pillow can only
decode a whole image, so PNG/JPEG/BMP larger than :data:`MAX_DECODED_PIXELS` are refused with a
clear error rather than filling memory.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from xt_core.errors import SlideError
from xt_core.slide._tiffslide import _to_rgb
from xt_core.slide.backend import SlideBackend, SlideMetadata
from xt_core.slide.mpp import judge_mpp, mpp_from_dpi, mpp_from_resolution

TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp") + TIFF_SUFFIXES

#: The most pixels this backend decodes in one piece: a whole PNG/JPEG/BMP, or one TIFF tile or
#: strip. 2^27 px is an 11,585 px square, 384 MiB as RGB (and about twice that while Pillow
#: converts it).
MAX_DECODED_PIXELS = 2**27


class ImageBackend(SlideBackend):
    """One level. A decoded PNG/JPEG is shared by every thread; a TIFF handle seeks one file
    object, so a TIFF is not ``thread_safe`` and :class:`Slide` opens one handle per thread."""

    name = "image"
    thread_safe = True

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        if self.path.lower().endswith(TIFF_SUFFIXES) or _is_tiff(self.path):  # NDPI, SVS... are TIFFs too
            self._reader: _TiffReader | _PillowReader = _TiffReader(self.path)
            self.thread_safe = False
        else:
            self._reader = _PillowReader(self.path)

    def metadata(self) -> SlideMetadata:
        header = judge_mpp(self._reader.mpp)
        return SlideMetadata(
            level_dimensions=(self._reader.size,),
            level_downsamples=(1.0,),
            mpp=header.mpp,
            vendor=None,
            objective_power=None,
            associated_images=(),
            properties=dict(self._reader.properties),
            mpp_rejected=header.rejected,
        )

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        return self._reader.read(x, y, width, height)

    def read_associated(self, name: str) -> np.ndarray:
        raise KeyError(name)

    def close(self) -> None:
        self._reader.close()


class _TiffReader:
    """The first page of a TIFF, read region by region through tifffile's zarr view of it."""

    def __init__(self, path: str) -> None:
        import tifffile

        self.path = path
        tif = tifffile.TiffFile(path)
        try:
            page = tif.pages[0]
            self.axes = page.axes
            samples = {"YX": 1, "YXS": page.shape[-1], "SYX": page.shape[0]}.get(self.axes, 0)
            if not 1 <= samples <= 4:
                raise SlideError(path, f"unsupported TIFF layout {page.axes} {page.shape} (expected a 2-D grey or RGB image)")
            height, width = (page.shape[1:3] if self.axes == "SYX" else page.shape[:2])
            self.size = (int(width), int(height))
            segment = (page.tilelength * page.tilewidth if page.is_tiled
                       else min(page.rowsperstrip or height, height) * width)
            if segment > MAX_DECODED_PIXELS:
                raise SlideError(path, f"stored as {'tiles' if page.is_tiled else 'strips'} of {segment:,} px; the "
                                       f"plain-image reader decodes at most {MAX_DECODED_PIXELS:,} px at once")
            tags = page.tags
            unit = tags.get("ResolutionUnit")
            self.mpp = mpp_from_resolution(
                getattr(tags.get("XResolution"), "value", None),
                getattr(tags.get("YResolution"), "value", None),
                getattr(unit, "value", None),
            )
            self.properties = {"image.format": "tiff", "image.compression": str(page.compression.name)}
        except Exception:
            tif.close()
            raise
        import zarr

        self._tif = tif
        self._pixels = zarr.open(tif.aszarr(key=0), mode="r")

    def read(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        pixels = self._pixels
        if self.axes == "SYX":
            return _to_rgb(np.moveaxis(np.asarray(pixels[:, y : y + height, x : x + width]), 0, -1))
        return _to_rgb(np.asarray(pixels[y : y + height, x : x + width]))

    def close(self) -> None:
        self._tif.close()


class _PillowReader:
    """A PNG, JPEG or BMP decoded whole, once (such files are small; larger ones are refused)."""

    def __init__(self, path: str) -> None:
        from PIL import Image

        self.path = path
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
                with Image.open(path) as img:
                    width, height = img.size
                    _check_pixels(path, width, height)
                    img.load()
                    fmt = img.format or "unknown"
                    dpi = img.info.get("dpi")
                    rgb = img.convert("RGBA") if img.mode in ("RGBA", "LA", "P") else img.convert("RGB")
        except Image.DecompressionBombError as exc:  # over Pillow's own limit, which is above ours
            raise SlideError(path, f"image too large for the plain-image reader, which decodes whole images of at most "
                                   f"{MAX_DECODED_PIXELS:,} px ({exc})") from exc
        self._pixels = _to_rgb(np.asarray(rgb))
        self.size = (int(width), int(height))
        self.mpp = mpp_from_dpi(dpi)
        self.properties = {"image.format": fmt.lower()}

    def read(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        return self._pixels[y : y + height, x : x + width].copy()

    def close(self) -> None:
        pass


def _is_tiff(path: str) -> bool:
    """Whether the file starts as a TIFF or BigTIFF does (little- or big-endian)."""
    with open(path, "rb") as f:
        return f.read(4) in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


def _check_pixels(path: str, width: int, height: int) -> None:
    if width * height > MAX_DECODED_PIXELS:
        raise SlideError(
            path,
            f"{width} x {height} px image is larger than the {MAX_DECODED_PIXELS:,} px the plain-image reader "
            "decodes whole; convert it to a tiled pyramidal TIFF (e.g. vips tiffsave --tile --pyramid)",
        )
