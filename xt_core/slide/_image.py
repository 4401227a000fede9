"""Plain images: untiled TIFF, PNG, JPEG. One level, held in memory (such files are small)."""

from __future__ import annotations

import os

import numpy as np

from xt_core.slide.backend import SlideBackend, SlideMetadata
from xt_core.slide._tiffslide import _to_rgb

TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp") + TIFF_SUFFIXES

# Resolution tags from office software say 72 or 300 dpi: hundreds of microns per pixel.
# A microscope image is well under this; above it the tag is not a real pixel size.
_MAX_PLAUSIBLE_MPP = 50.0


class ImageBackend(SlideBackend):
    """Reads the whole image once; slicing a numpy array is safe from any thread."""

    name = "image"
    thread_safe = True

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        if self.path.lower().endswith(TIFF_SUFFIXES):
            self._pixels, self._mpp, props = _read_tiff(self.path)
        else:
            self._pixels, self._mpp, props = _read_pillow(self.path)
        self._properties = props

    def metadata(self) -> SlideMetadata:
        h, w = self._pixels.shape[:2]
        return SlideMetadata(
            level_dimensions=((w, h),),
            level_downsamples=(1.0,),
            mpp=self._mpp,
            vendor=None,
            objective_power=None,
            associated_images=(),
            properties=self._properties,
        )

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        return self._pixels[y : y + height, x : x + width].copy()

    def read_associated(self, name: str) -> np.ndarray:
        raise KeyError(name)


def _read_tiff(path: str) -> tuple[np.ndarray, tuple[float, float] | None, dict[str, str]]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        pixels = _to_rgb(page.asarray())
        mpp = _mpp_from_resolution(page)
        props = {"image.format": "tiff", "image.compression": str(page.compression.name)}
    return pixels, mpp, props


def _mpp_from_resolution(page) -> tuple[float, float] | None:
    """Microns per pixel from XResolution/YResolution when the unit is inch or centimetre."""
    tags = page.tags
    unit = tags.get("ResolutionUnit")
    xres, yres = tags.get("XResolution"), tags.get("YResolution")
    if unit is None or xres is None or yres is None:
        return None
    microns_per_unit = {2: 25400.0, 3: 10000.0}.get(int(unit.value))
    if microns_per_unit is None:
        return None
    out = []
    for tag in (xres, yres):
        num, den = tag.value
        if not num or not den:
            return None
        out.append(microns_per_unit * den / num)
    if max(out) > _MAX_PLAUSIBLE_MPP:
        return None
    return (out[0], out[1])


def _read_pillow(path: str) -> tuple[np.ndarray, tuple[float, float] | None, dict[str, str]]:
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        fmt = img.format or "unknown"
        rgb = img.convert("RGBA") if img.mode in ("RGBA", "LA", "P") else img.convert("RGB")
        pixels = _to_rgb(np.asarray(rgb))
    return pixels, None, {"image.format": fmt.lower()}
