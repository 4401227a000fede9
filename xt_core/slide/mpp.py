"""One rule, for every backend, on whether a header's pixel size is a microscope's.

Generic TIFFs, PNGs and JPEGs carry resolution tags that office and imaging software fill with
screen or print defaults (72, 96, 300 dpi...): hundreds of microns per pixel. OpenSlide and
tiffslide report those as the slide's ``mpp`` as they are, and a model would then work at a
silently wrong scale. A pixel size is therefore only taken from a header when it is one a
microscope produces; otherwise the slide has no pixel size, the reason is kept (``Slide.mpp_source``
and ``xt-slide info`` show it) and work that needs one asks for ``mpp=`` / ``--mpp``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

#: Microns per pixel a microscope scan can have: from beyond 100x oil (about 0.1) to a
#: low-power overview (a few um); anything outside is not a scan's pixel size.
MIN_MPP = 0.05
MAX_MPP = 20.0
#: Resolutions software writes by default (screens, printers, scanners of paper), in dots per
#: inch; the same numbers also turn up as pixels per centimetre.
DEFAULT_RESOLUTIONS = (72, 96, 100, 120, 144, 150, 200, 240, 300, 600, 1200)
_MICRONS_PER_UNIT = {"inch": 25400.0, "cm": 10000.0}
_TIFF_UNITS = {2: "inch", 3: "cm"}  # TIFF ResolutionUnit: 1 none, 2 inch, 3 centimetre
# Software converting dpi to pixels per cm rounds (96 dpi -> 37.795 px/cm); real pixel sizes
# are nowhere near these values, so a loose match is safe.
_REL_TOLERANCE = 2e-3


class HeaderMpp(NamedTuple):
    """A header's pixel size after the rule: ``mpp`` when usable, else why not (``rejected``)."""

    mpp: tuple[float, float] | None
    rejected: str | None = None


def judge_mpp(mpp: tuple[float, float] | None) -> HeaderMpp:
    """Keep a header's (x, y) microns per pixel only when a microscope could have produced it.

    Rejected: values that are a default resolution (see :data:`DEFAULT_RESOLUTIONS`) per inch
    or per centimetre, and values outside ``MIN_MPP``-``MAX_MPP``. ``None`` (no value in the
    header) stays ``HeaderMpp(None, None)``: nothing was rejected.
    """
    if mpp is None:
        return HeaderMpp(None)
    for value in mpp:
        default = _default_resolution(value)
        if default is not None:
            per, unit = default
            return HeaderMpp(None, f"header says {per} {unit} = {value:.4g} um/px, a screen/print default")
    for value in mpp:
        if not MIN_MPP <= value <= MAX_MPP:
            return HeaderMpp(None, f"header says {value:.4g} um/px, outside the {MIN_MPP:g}-{MAX_MPP:g} um/px "
                                   "a microscope produces")
    return HeaderMpp((float(mpp[0]), float(mpp[1])))


def _default_resolution(mpp: float) -> tuple[int, str] | None:
    """(value, "dpi" or "px/cm") when ``mpp`` is a default resolution in inch or cm units."""
    for unit, label in (("inch", "dpi"), ("cm", "px/cm")):
        per_unit = _MICRONS_PER_UNIT[unit] / mpp
        for default in DEFAULT_RESOLUTIONS:
            if abs(per_unit - default) <= _REL_TOLERANCE * default:
                return default, label
    return None


def mpp_from_resolution(x_resolution: object, y_resolution: object, unit: object) -> tuple[float, float] | None:
    """Microns per pixel from TIFF XResolution/YResolution (rationals or numbers) and ResolutionUnit.

    None when a tag is missing or zero or the unit is not inch or centimetre (unit "none" only
    gives an aspect ratio). The result is the raw header value: pass it to :func:`judge_mpp`.
    """
    name = _TIFF_UNITS.get(int(unit)) if isinstance(unit, (int, float)) else None
    if name is None:
        return None
    out = []
    for res in (x_resolution, y_resolution):
        per_unit = _as_number(res)
        if per_unit is None:
            return None
        out.append(_MICRONS_PER_UNIT[name] / per_unit)
    return (out[0], out[1])


def mpp_from_dpi(dpi: object) -> tuple[float, float] | None:
    """Microns per pixel from Pillow's ``info["dpi"]`` (PNG pHYs, JPEG JFIF density), raw."""
    if not isinstance(dpi, (tuple, list)) or len(dpi) != 2:
        return None
    values = [_as_number(v) for v in dpi]
    if None in values:
        return None
    return (25400.0 / values[0], 25400.0 / values[1])  # type: ignore[operator]


def _as_number(value: object) -> float | None:
    """A positive finite number from a number or a (numerator, denominator) pair."""
    try:
        if isinstance(value, (tuple, list)):
            number = float(value[0]) / float(value[1]) if float(value[1]) else 0.0
        else:
            number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, IndexError):
        return None
    return number if math.isfinite(number) and number > 0 else None
