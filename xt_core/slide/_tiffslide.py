"""tiffslide backend: pure Python on tifffile; sees OME-TIFF SubIFD pyramids that OpenSlide misses."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np

from xt_core.slide.backend import SlideBackend, SlideMetadata, rgba_on_white
from xt_core.slide.mpp import judge_mpp
from xt_core.slide.properties import parse_float, parse_mpp


class TiffSlideBackend(SlideBackend):
    """Wraps ``tiffslide.TiffSlide``.

    A tifffile handle seeks a shared file object, so reads from several threads need one
    handle per thread: ``thread_safe`` is False and :class:`Slide` opens one per thread.
    """

    name = "tiffslide"
    thread_safe = False

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        import tiffslide

        with warnings.catch_warnings():
            # tiffslide warns that its NDPI metadata parsing is partial; the geometry and
            # pixel size we use are parsed, and a warning per open floods batch logs.
            warnings.filterwarnings("ignore", message=".*metadata parsing only partially", category=UserWarning)
            self._slide = tiffslide.TiffSlide(self.path)
            # Parse the pyramid now, so a corrupt file fails at open, not at the first read.
            _ = self._slide.level_dimensions
            _ = self._slide.properties

    def metadata(self) -> SlideMetadata:
        s = self._slide
        props = {k: str(v) for k, v in s.properties.items() if v is not None}
        header = judge_mpp(parse_mpp(props.get("tiffslide.mpp-x"), props.get("tiffslide.mpp-y")))
        return SlideMetadata(
            level_dimensions=tuple((int(w), int(h)) for w, h in s.level_dimensions),
            level_downsamples=tuple(float(d) for d in s.level_downsamples),
            mpp=header.mpp,
            vendor=props.get("tiffslide.vendor"),
            objective_power=parse_float(props.get("tiffslide.objective-power")),
            associated_images=tuple(s.associated_images.keys()),
            properties=props,
            mpp_rejected=header.rejected,
        )

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        # tiffslide truncates level-0 location / downsample; ceil lands exactly on (x, y).
        ds = self._slide.level_downsamples[level]
        loc = (math.ceil(x * ds), math.ceil(y * ds))
        arr = self._slide.read_region(loc, level, (width, height), as_array=True)
        return _to_rgb(arr)

    def read_associated(self, name: str) -> np.ndarray:
        return _to_rgb(np.asarray(self._slide.associated_images[name]))

    def close(self) -> None:
        self._slide.close()


def _to_rgb(arr: np.ndarray) -> np.ndarray:
    """Grey, RGBA or 16-bit pixels as RGB uint8 (fluorescence NDPI channels are grey)."""
    if arr.dtype != np.uint8:
        arr = _rescale_to_uint8(arr)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    elif arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return rgba_on_white(arr)


def _rescale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map an integer image's full dtype range onto 0..255."""
    if np.issubdtype(arr.dtype, np.integer):
        return (arr.astype(np.float64) * 255.0 / np.iinfo(arr.dtype).max).round().astype(np.uint8)
    return np.clip(arr * 255.0, 0, 255).round().astype(np.uint8)
