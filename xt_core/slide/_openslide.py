"""OpenSlide backend: the C library, vendor formats (SVS, NDPI, MRXS, SCN, ...)."""

from __future__ import annotations

import os

import numpy as np

from xt_core.slide.backend import SlideBackend, SlideMetadata, rgba_on_white
from xt_core.slide.mpp import judge_mpp
from xt_core.slide.properties import parse_float, parse_mpp


class OpenSlideBackend(SlideBackend):
    """Wraps ``openslide.OpenSlide``. The library is thread-safe for reads."""

    name = "openslide"
    thread_safe = True

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        import openslide  # imported here so tiffslide-only installs still work

        self._slide = openslide.OpenSlide(self.path)

    def metadata(self) -> SlideMetadata:
        s = self._slide
        props = dict(s.properties)
        header = judge_mpp(parse_mpp(props.get("openslide.mpp-x"), props.get("openslide.mpp-y")))
        return SlideMetadata(
            level_dimensions=tuple((int(w), int(h)) for w, h in s.level_dimensions),
            level_downsamples=tuple(float(d) for d in s.level_downsamples),
            mpp=header.mpp,
            vendor=props.get("openslide.vendor"),
            objective_power=parse_float(props.get("openslide.objective-power")),
            associated_images=tuple(s.associated_images.keys()),
            properties=props,
            mpp_rejected=header.rejected,
        )

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        # OpenSlide takes the top-left corner in level-0 pixels and divides by the
        # downsample itself; ceil keeps integer division landing on level pixel (x, y).
        ds = self._slide.level_downsamples[level]
        loc = (int(np.ceil(x * ds)), int(np.ceil(y * ds)))
        region = self._slide.read_region(loc, level, (width, height))
        return rgba_on_white(np.asarray(region))

    def read_associated(self, name: str) -> np.ndarray:
        return rgba_on_white(np.asarray(self._slide.associated_images[name]))

    def close(self) -> None:
        self._slide.close()
