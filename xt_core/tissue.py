"""Tissue detection on slide thumbnails, and cheap tissue fractions of level-0 boxes.

Which regions of a slide to encode is decided once, on a low-resolution thumbnail: a
region-level model never needs to see glass. The detector is deliberately classical
(colour thresholds plus morphology, no model): it runs on any slide in about a second (a
2048 px thumbnail on one CPU core), gives the same answer everywhere, and fails in ways one
can see on the thumbnail.

What counts as tissue, and why:

* **The glass is the reference.** Optical density is relative to the light through empty
  glass, so the image is first white-balanced on the glass (the tight cluster of brightest
  pixels, when there is one): a yellowish or bluish cast of the scanner would otherwise read as
  saturation over the whole slide.
* **Glass is unsaturated; stain is not.** Stained tissue absorbs light in a hue, so HSV
  saturation separates it from glass better than brightness does (glass can be greyish, pale
  eosin is bright). The threshold is Otsu's, computed on log-saturation, where glass (~0.01)
  and stain (0.1-0.6) are two populations a factor apart and the split lands where pale stroma
  begins. It is clipped to a narrow range: on an image that is all glass Otsu would split the
  noise into two "classes", on one that is all tissue it would split pale from dark tissue.
* **Some light must be absorbed.** Saturated but very bright pixels are not tissue: a minimum
  optical density (OD = -log((I + 1) / 256) summed over RGB) guards the saturation test. Dark
  but unsaturated pixels (IHC counterstain, dense tissue) count through a higher OD threshold.
* **Ink is not tissue.** Pen marks are found by colour: green/cyan and strong blue never occur
  in H&E or IHC; pure, saturated red (and its dark core) is redder than eosin, which leans to
  magenta; black is darker and greyer than stained tissue at thumbnail scale. Seeds of
  unambiguous ink (large enough to be strokes) are grown into the connected paler/darker parts
  of the same stroke (hysteresis), a margin is removed around them, and tissue pieces lying
  almost entirely in the blurred halo of ink are dropped.
* **Black is not tissue.** Scanner borders, fully dark out-of-focus areas and the background of
  fluorescence images are darker than anything in a brightfield stain.

Morphology then closes small gaps, removes specks and fills small holes, with sizes scaled
to the image, so the same defaults work for a 1024 px or a 2048 px thumbnail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage as ndi

if TYPE_CHECKING:
    from xt_core.slide import Slide

__all__ = [
    "DEFAULT_MAX_SIZE",
    "DEFAULT_MIN_SIZE",
    "DEFAULT_TARGET_MPP",
    "TissueMask",
    "tissue_mask",
    "tissue_mask_from_rgb",
]

#: Longest side of the thumbnail the mask is computed on, at most (pixels).
DEFAULT_MAX_SIZE = 2048
#: Longest side at least, for slides small enough that the target resolution would be coarse.
DEFAULT_MIN_SIZE = 1024
#: Resolution aimed at when the slide's pixel size is known (microns per thumbnail pixel):
#: fine enough for 100-um tissue fragments, coarse enough that nuclei blur into tissue.
DEFAULT_TARGET_MPP = 8.0

# Ink seeds smaller than this fraction of the image are ignored: pen strokes are large, while
# red blood cells or dark nuclei at a fine thumbnail scale are small.
_INK_SEED_FRACTION = 2e-4
# Hue ranges (degrees) of inks that never occur in H&E (pink/purple) or IHC (brown/blue-grey).
_GREEN_HUES = (70.0, 190.0)
_BLUE_HUES = (190.0, 240.0)
_RED_HUE_FROM, _RED_HUE_TO = 345.0, 20.0  # wraps through 0
# White balance is applied only when the glass found is at least this bright in every channel
# (a gain of at most 255 / 200 ~ 1.28).
_MIN_GLASS_VALUE = 200.0
# ... and only when at least this fraction of the image is within this many levels of it.
_MIN_GLASS_FRACTION = 0.03
_GLASS_TOLERANCE = 6.0
# Saturation is thresholded in the log domain, log(s + offset): the offset keeps glass finite.
_LOG_OFFSET = 0.01
# Otsu classes whose mean log-saturations differ by less than this (a factor of ~1.6) are one
# population split in two.
_MIN_OTSU_SEPARATION = 0.5
# Dark pixels (max channel below this) may belong to an ink stroke grown from a seed.
_DARK_INK_VALUE = 130.0


def tissue_mask_from_rgb(
    rgb: ArrayLike,
    *,
    method: Literal["otsu", "fixed"] = "otsu",
    min_saturation: float = 0.07,
    max_saturation_threshold: float = 0.10,
    min_od: float = 0.25,
    grey_od: float = 0.9,
    remove_pen: bool = True,
    black_value: float = 40.0,
    smoothing_sigma: float = 1.0,
    white_balance: bool = True,
    closing_fraction: float = 0.002,
    min_object_fraction: float = 1e-4,
    max_hole_fraction: float = 1e-3,
    pen_margin_fraction: float = 0.01,
    pen_halo_fraction: float = 0.04,
) -> np.ndarray:
    """Boolean tissue mask (same height and width) of a low-resolution RGB(A) uint8 image.

    Made for whole-slide thumbnails of about 1-20 um per pixel; works on any RGB tile. Why each
    step is there is in the module docstring.

    * ``white_balance``: divide the glass colour out first (skipped when no glass is in view).
    * ``method="otsu"`` thresholds saturation at Otsu's level (log domain), clipped to
      [``min_saturation``, ``max_saturation_threshold``]; ``"fixed"`` uses ``min_saturation``.
      Saturated pixels must also have OD > ``min_od``; any pixel with OD > ``grey_od`` is tissue
      whatever its saturation.
    * Pixels whose brightest channel is below ``black_value`` are never tissue.
    * ``remove_pen`` drops green/blue/red/black ink strokes, a margin of ``pen_margin_fraction``
      around them, and tissue pieces lying (>= 75 %) within ``pen_halo_fraction`` beyond that
      (both fractions of the image's longer side).
    * ``smoothing_sigma``: Gaussian blur (pixels) before any threshold.
    * Morphology: a closing with a disk of ``closing_fraction`` x the longer side, an opening
      with a 1-px disk, then objects up to ``min_object_fraction`` and holes up to
      ``max_hole_fraction`` of the image area are removed / filled.

    An alpha channel, if any, marks transparent pixels as not tissue; a 2-D array is grey.
    """
    if method not in ("otsu", "fixed"):
        raise ValueError(f"unknown method {method!r}; choose 'otsu' or 'fixed'")
    image, opaque = _as_rgb_float(rgb)
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        return np.zeros((h, w), dtype=bool)
    if smoothing_sigma > 0:  # JPEG noise and single dark nuclei should not decide pixels
        # in place: the float image is this function's own copy (3 x 4 bytes a pixel, 42 MB at 2048 px)
        ndi.gaussian_filter(image, sigma=(smoothing_sigma, smoothing_sigma, 0), mode="nearest", output=image)
    if white_balance:
        image = _white_balance(image, opaque)
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    value = np.maximum(np.maximum(r, g), b)
    chroma = value - np.minimum(np.minimum(r, g), b)
    saturation = np.divide(chroma, value, out=np.zeros_like(value), where=value > 0)
    od = np.zeros((h, w), dtype=np.float32)  # summed channel by channel: no (h, w, 3) temporaries
    channel = np.empty((h, w), dtype=np.float32)
    for c in range(3):
        np.add(image[..., c], 1.0, out=channel)
        channel /= 256.0
        np.log(channel, out=channel)
        od -= channel
    longer = max(h, w)

    ink = near_ink = np.zeros((h, w), dtype=bool)
    if remove_pen:
        ink = _ink_mask(_hue(image, value, chroma), saturation, value, chroma,
                        min_seed=max(4, int(_INK_SEED_FRACTION * h * w)))
        if ink.any():  # one distance map gives both the margin and the halo zone
            to_ink = ndi.distance_transform_edt(~ink)
            margin = max(1.0, round(pen_margin_fraction * longer)) if pen_margin_fraction > 0 else 0.0
            ink = to_ink <= margin
            near_ink = to_ink <= margin + pen_halo_fraction * longer
    valid = opaque & ~ink & (value >= black_value)
    del image, r, g, b, value, chroma  # the float image and its planes: the rest needs masks only

    threshold = min_saturation
    if method == "otsu":
        threshold = _clipped_otsu(saturation[valid], min_saturation, max_saturation_threshold)
    tissue = valid & (((saturation > threshold) & (od > min_od)) | (od > grey_od))

    radius = round(closing_fraction * longer)
    if radius >= 1:  # pad so that tissue touching the image edge is not eroded by the closing
        padded = np.pad(tissue, radius, mode="edge")
        tissue = ndi.binary_closing(padded, _disk(radius))[radius:-radius, radius:-radius]
    if min(h, w) > 8:  # a 1-px opening removes lines one pixel wide (hairs, scratches)
        tissue = ndi.binary_opening(tissue, _disk(1))
    tissue = _remove_small(tissue, min_object_fraction * h * w)
    if pen_halo_fraction > 0 and ink.any():
        tissue = _drop_ink_halos(tissue, near_ink)
    tissue = _fill_small_holes(tissue, max_hole_fraction * h * w)
    return tissue & opaque


@dataclass(frozen=True, eq=False)
class TissueMask:
    """A slide's tissue mask and what it says about level-0 boxes.

    ``mask`` covers the whole slide: mask pixel (row ``r``, column ``c``) is the level-0 box
    ``[c * dx, (c + 1) * dx) x [r * dy, (r + 1) * dy)`` where ``downsample == (dx, dy)``.
    ``fraction`` is the tissue fraction of the slide. :meth:`fraction_in_box` is O(1) through a
    summed-area table built once: 100,000 calls take under a second, and
    :meth:`fractions_in_boxes` does them as one array operation in a twentieth of that.
    """

    mask: np.ndarray = field(repr=False)
    downsample: tuple[float, float]
    fraction: float = field(init=False)
    _table: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        mask = np.array(self.mask, dtype=bool, copy=True)  # private, read-only copy
        if mask.ndim != 2:
            raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
        dx, dy = (float(d) for d in self.downsample)
        if not (dx > 0 and dy > 0 and math.isfinite(dx) and math.isfinite(dy)):
            raise ValueError(f"downsample must be two positive numbers, got {self.downsample!r}")
        mask.setflags(write=False)
        table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.float64)
        np.cumsum(np.cumsum(mask, axis=0, dtype=np.float64), axis=1, out=table[1:, 1:])
        table.setflags(write=False)
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "downsample", (dx, dy))
        object.__setattr__(self, "fraction", float(mask.mean()) if mask.size else 0.0)
        object.__setattr__(self, "_table", table)

    @property
    def dimensions(self) -> tuple[float, float]:
        """Level-0 (width, height) the mask covers: the slide's dimensions."""
        return (self.mask.shape[1] * self.downsample[0], self.mask.shape[0] * self.downsample[1])

    def fraction_in_box(self, x0: float, y0: float, x1: float, y1: float) -> float:
        """Tissue fraction of the level-0 box ``[x0, x1) x [y0, y1)``, in [0, 1].

        Mask pixels the box covers partly count with the part covered (the mask is taken as
        piecewise constant), so boxes smaller than a mask pixel get the right answer. The parts
        of the box outside the slide count as non-tissue. An empty box gives 0.
        """
        dx, dy = self.downsample
        u0, u1, v0, v1 = x0 / dx, x1 / dx, y0 / dy, y1 / dy
        area = (u1 - u0) * (v1 - v0)
        if not area > 0:  # also catches NaN
            return 0.0
        rows, cols = self.mask.shape
        u0, u1 = min(max(u0, 0.0), cols), min(max(u1, 0.0), cols)
        v0, v1 = min(max(v0, 0.0), rows), min(max(v1, 0.0), rows)
        if u1 <= u0 or v1 <= v0:
            return 0.0
        t = self._table
        inside = _integral(t, u1, v1) - _integral(t, u0, v1) - _integral(t, u1, v0) + _integral(t, u0, v0)
        return min(max(inside / area, 0.0), 1.0)

    def fractions_in_boxes(self, boxes: ArrayLike) -> np.ndarray:
        """:meth:`fraction_in_box` for an ``(n, 4)`` array of ``(x0, y0, x1, y1)`` boxes at once."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if self.mask.size == 0:
            return np.zeros(len(b), dtype=np.float64)
        dx, dy = self.downsample
        u0, v0, u1, v1 = b[:, 0] / dx, b[:, 1] / dy, b[:, 2] / dx, b[:, 3] / dy
        area = (u1 - u0) * (v1 - v0)
        rows, cols = self.mask.shape
        cu0, cu1 = np.clip(u0, 0, cols), np.clip(u1, 0, cols)
        cv0, cv1 = np.clip(v0, 0, rows), np.clip(v1, 0, rows)
        t = self._table
        inside = (_integral_v(t, cu1, cv1) - _integral_v(t, cu0, cv1)
                  - _integral_v(t, cu1, cv0) + _integral_v(t, cu0, cv0))
        ok = (area > 0) & (cu1 > cu0) & (cv1 > cv0)
        out = np.zeros(len(b), dtype=np.float64)
        np.divide(inside, area, out=out, where=ok)
        return np.clip(out, 0.0, 1.0)


def tissue_mask(
    slide: "Slide",
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    min_size: int = DEFAULT_MIN_SIZE,
    target_mpp: float | None = DEFAULT_TARGET_MPP,
    **kwargs,
) -> TissueMask:
    """Detect tissue on a thumbnail of ``slide``; ``kwargs`` go to :func:`tissue_mask_from_rgb`.

    The thumbnail's longer side is chosen for ``target_mpp`` microns per pixel when the slide's
    pixel size is known, kept within [``min_size``, ``max_size``]; ``max_size`` when it is not.
    It is never larger than the slide itself (a thumbnail must not upsample).
    """
    width, height = slide.dimensions
    longer = max(width, height)
    size = int(max_size)
    mpp = getattr(slide, "mpp", None)
    if mpp is not None and target_mpp:
        size = round(longer * max(mpp) / float(target_mpp))
        size = min(max(size, int(min_size)), int(max_size))
    size = max(1, min(size, longer))
    rgb = slide.get_thumbnail(size)
    mask = tissue_mask_from_rgb(rgb, **kwargs)
    return TissueMask(mask, (width / mask.shape[1], height / mask.shape[0]))


# ---------------------------------------------------------------------------- helpers
def _as_rgb_float(rgb: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(float32 RGB, opaque mask) from a uint8 grey, RGB or RGBA array."""
    a = np.asarray(rgb)
    if a.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got dtype {a.dtype}")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an (h, w), (h, w, 3) or (h, w, 4) image, got shape {a.shape}")
    opaque = a[..., 3] >= 128 if a.shape[-1] == 4 else np.ones(a.shape[:2], dtype=bool)
    image = a[..., :3].astype(np.float32)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image, opaque


def _white_balance(image: np.ndarray, opaque: np.ndarray) -> np.ndarray:
    """Scale each channel so that the glass is white.

    Optical density is relative to the light through the glass, and a colour cast of the glass
    (yellowish, bluish scanners) would otherwise read as saturation everywhere. The glass
    colour is the median of the brightest 1 % of pixels; when that is not bright (no glass in
    view, a dark or fluorescence image) nothing is changed.
    """
    step = max(1, opaque.size // 250_000)  # a subsample is plenty for a median and a percentile
    pixels = image.reshape(-1, 3)[::step][opaque.reshape(-1)[::step]]
    if pixels.shape[0] < 100:
        return image
    brightness = pixels.sum(axis=-1)
    glass = np.median(pixels[brightness >= np.percentile(brightness, 99)], axis=0)
    if float(glass.min()) < _MIN_GLASS_VALUE:
        return image
    # Glass is one tight cluster of colour; the brightest pixels of an image that is all tissue
    # (pale stroma, a lumen) are not, and must not be made white.
    if np.mean(np.abs(pixels - glass).max(axis=-1) <= _GLASS_TOLERANCE) < _MIN_GLASS_FRACTION:
        return image
    # in place, rounded as before (float64 product, then float32); no float64 copy of the image
    np.multiply(image, 255.0 / glass, out=image, casting="unsafe")
    return np.minimum(image, 255.0, out=image)


def _hue(image: np.ndarray, value: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    """HSV hue in degrees [0, 360) (0 where there is no chroma)."""
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    coloured = chroma > 0
    c = np.where(coloured, chroma, 1.0)
    # the three sectors written over one another, the last write winning as np.select's first
    # match does (red, then green, then blue): two (h, w) arrays instead of seven
    hue = np.subtract(r, g)
    hue /= c
    hue += 4.0
    part = np.subtract(b, r)
    part /= c
    part += 2.0
    np.copyto(hue, part, where=value == g)
    np.subtract(g, b, out=part)
    part /= c
    np.mod(part, 6.0, out=part)
    np.copyto(hue, part, where=value == r)
    hue *= 60.0
    hue[~coloured] = 0.0
    return hue


def _ink_mask(hue: np.ndarray, sat: np.ndarray, value: np.ndarray, chroma: np.ndarray,
              min_seed: int) -> np.ndarray:
    """Pen strokes: unambiguous ink seeds grown into the rest of their stroke (hysteresis)."""
    dark = value < _DARK_INK_VALUE
    green = (hue >= _GREEN_HUES[0]) & (hue < _GREEN_HUES[1])
    blue = (hue >= _BLUE_HUES[0]) & (hue < _BLUE_HUES[1])
    red = (hue >= _RED_HUE_FROM) | (hue < _RED_HUE_TO)
    # the dark core of a red stroke: deep, very saturated, still redder than hematoxylin purple
    dark_red = (value < 100) & (sat > 0.6) & ((hue >= 335) | (hue < _RED_HUE_TO))
    ink = _grow(green & (sat > 0.15), green & (sat > 0.05), min_seed)
    ink |= _grow(blue & (sat > 0.5), blue & (sat > 0.25), min_seed)
    ink |= _grow((red & (sat > 0.5)) | dark_red, (red & (sat > 0.05)) | dark, min_seed)
    black = (value < 40) | ((value < 80) & (chroma < 20))
    ink |= _grow(black, ((value < 180) & (chroma < 25)) | dark, min_seed)
    return ink


def _grow(seed: np.ndarray, weak: np.ndarray, min_seed: int) -> np.ndarray:
    """Connected components of ``seed | weak`` that hold a seed object larger than ``min_seed``."""
    seed = _remove_small(seed, min_seed)
    if not seed.any():
        return seed
    labels, n = ndi.label(seed | weak)
    keep = np.zeros(n + 1, dtype=bool)
    keep[np.unique(labels[seed])] = True
    keep[0] = False
    return keep[labels]


def _remove_small(mask: np.ndarray, max_size: float) -> np.ndarray:
    """``mask`` without its 4-connected objects of ``max_size`` pixels or fewer.

    (scikit-image renamed the size arguments of remove_small_objects/holes in 0.26; this keeps
    one behaviour across the supported versions.)
    """
    if max_size < 1 or not mask.any():
        return mask
    labels, n = ndi.label(mask)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes > max_size
    keep[0] = False
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, max_size: float) -> np.ndarray:
    """``mask`` with background components of ``max_size`` pixels or fewer filled."""
    background = ~mask
    return mask | (background & ~_remove_small(background, max_size))


def _drop_ink_halos(tissue: np.ndarray, near_ink: np.ndarray) -> np.ndarray:
    """Remove tissue objects lying (>= 75 % of their pixels) in ``near_ink``, the zone around ink.

    An out-of-focus pen stroke fades into the glass through pale, tissue-coloured pixels: a
    rim around the stroke. Real tissue under or beside a pen mark extends beyond that rim.
    """
    labels, n = ndi.label(tissue)
    if n == 0:
        return tissue
    total = np.bincount(labels.ravel(), minlength=n + 1)
    close = np.bincount(labels[near_ink].ravel(), minlength=n + 1)
    drop = close >= 0.75 * total
    drop[0] = False
    return tissue & ~drop[labels]


def _clipped_otsu(saturation: np.ndarray, low: float, high: float) -> float:
    """Otsu's threshold of log-saturation, back in saturation units, clipped to [low, high].

    Glass (saturation ~0.01) and stain (0.1-0.6) differ by a factor, not an offset: in the log
    domain Otsu's split lands between the two populations, where pale stroma begins, instead of
    halfway up the stain's range. When the two classes are barely apart (one population split
    through its noise, e.g. an image of glass only) the threshold is ``high``.
    """
    if saturation.size < 16 or float(saturation.max()) - float(saturation.min()) < 1e-6:
        return high
    values = np.log(saturation + _LOG_OFFSET)
    t = otsu_threshold(values)
    below, above = values[values <= t], values[values > t]
    if below.size == 0 or above.size == 0 or float(above.mean()) - float(below.mean()) < _MIN_OTSU_SEPARATION:
        return high
    return min(max(math.exp(t) - _LOG_OFFSET, low), high)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of float ``values``: the bin centre that best splits their 256-bin histogram.

    The between-class variance is maximised over the cuts between bins, the same rule and bins
    as scikit-image's ``threshold_otsu`` (tested equal), written here because importing
    scikit-image's filters costs every command 60 ms for these few lines.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        return lo
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = np.cumsum(hist[::-1])[::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_low = np.cumsum(hist * centres) / weight_low
        mean_high = (np.cumsum((hist * centres)[::-1]) / weight_high[::-1])[::-1]
    between = weight_low[:-1] * weight_high[1:] * (mean_low[:-1] - mean_high[1:]) ** 2
    return float(centres[int(np.nanargmax(between))])


def _disk(radius: int) -> np.ndarray:
    """A filled disc of ``radius`` pixels as a boolean structuring element ``(2r+1, 2r+1)``."""
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def _integral(table: np.ndarray, u: float, v: float) -> float:
    """Integral of the mask over [0, u) x [0, v) (mask coordinates, inside the mask).

    The mask is piecewise constant, so this integral is bilinear between the corners of the
    summed-area table: interpolating it is exact, not an approximation.
    """
    cols, rows = table.shape[1] - 1, table.shape[0] - 1
    i = min(int(u), cols - 1)
    j = min(int(v), rows - 1)
    fu, fv = u - i, v - j
    t00, t01 = table.item(j, i), table.item(j, i + 1)
    t10, t11 = table.item(j + 1, i), table.item(j + 1, i + 1)
    return (t00 * (1 - fu) + t01 * fu) * (1 - fv) + (t10 * (1 - fu) + t11 * fu) * fv


def _integral_v(table: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """:func:`_integral` for arrays of points."""
    cols, rows = table.shape[1] - 1, table.shape[0] - 1
    i = np.minimum(u.astype(np.int64), cols - 1)
    j = np.minimum(v.astype(np.int64), rows - 1)
    fu, fv = u - i, v - j
    top = table[j, i] * (1 - fu) + table[j, i + 1] * fu
    bottom = table[j + 1, i] * (1 - fu) + table[j + 1, i + 1] * fu
    return top * (1 - fv) + bottom * fv
