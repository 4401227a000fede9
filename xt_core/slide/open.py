"""``open_slide``: pick the backend that sees the whole pyramid, fail with one clear line."""

from __future__ import annotations

import os
from pathlib import Path

from xt_core.errors import SlideError
from xt_core.slide._image import IMAGE_SUFFIXES, TIFF_SUFFIXES, ImageBackend
from xt_core.slide._openslide import OpenSlideBackend
from xt_core.slide._tiffslide import TiffSlideBackend
from xt_core.slide.backend import SlideBackend
from xt_core.slide.slide import Slide, _reason

BACKENDS: dict[str, type[SlideBackend]] = {
    OpenSlideBackend.name: OpenSlideBackend,
    TiffSlideBackend.name: TiffSlideBackend,
    ImageBackend.name: ImageBackend,
}
_PLAIN_ONLY_SUFFIXES = tuple(s for s in IMAGE_SUFFIXES if s not in TIFF_SUFFIXES)


def open_slide(
    path: str | os.PathLike,
    backend: str = "auto",
    mpp: float | tuple[float, float] | None = None,
    force_mpp: bool = False,
) -> Slide:
    """Open a whole-slide image (or a plain image) for reading.

    ``backend`` is ``"auto"``, ``"openslide"``, ``"tiffslide"`` or ``"image"``. ``auto`` opens
    the file with both slide libraries and keeps the one that sees more pyramid levels
    (OpenSlide misses OME-TIFF SubIFD levels; tiffslide misses NDPI's finer JPEG levels),
    OpenSlide on a tie; when one fails, the other is used. The plain-image reader is used for
    PNG/JPEG/BMP, and for a TIFF only when both libraries fail. Opening reads the header and
    a few pixels, never a whole level. ``mpp`` is the pixel size in microns for files whose
    header has none (or one no microscope produces, e.g. 96 dpi: see :mod:`xt_core.slide.mpp`);
    with ``force_mpp`` it replaces the header's.

    Raises :class:`SlideError` (``"<path>: <reason>"``) for anything that is not a readable slide.
    """
    path = Path(path)
    _check_file(path)
    if backend == "auto":
        tiers = _auto_tiers(path)
    elif backend in BACKENDS:
        tiers = [[BACKENDS[backend]]]
    else:
        raise ValueError(f"unknown backend {backend!r}; choose auto, {', '.join(BACKENDS)}")

    opened: list[SlideBackend] = []
    failures: list[str] = []
    errors: list[Exception] = []
    for candidates in tiers:  # a later tier is tried only when every reader of the earlier ones failed
        for cls in candidates:
            handle: SlideBackend | None = None
            try:
                handle = cls(path)
                _probe(handle)
                opened.append(handle)
            except Exception as exc:  # every reader library has its own exception types
                errors.append(exc)
                failures.append(f"{cls.name}: {exc.reason if isinstance(exc, SlideError) else _reason(exc)}")
                if handle is not None:
                    _close_quietly(handle)
        if opened:
            break
    if not opened:
        if len(errors) == 1 and isinstance(errors[0], SlideError):
            raise errors[0]  # the only reader tried says exactly what is wrong (e.g. image too large)
        raise SlideError(path, f"not a readable slide or image ({'; '.join(failures)})")
    best = max(opened, key=_preference)  # the first candidate wins a full tie
    for handle in opened:
        if handle is not best:
            handle.close()
    return Slide(path, type(best), best, mpp=mpp, force_mpp=force_mpp)


def _preference(handle: SlideBackend) -> tuple[int, int]:
    """Sort key for ``auto``: more levels first, then pixel-exact reads at every level."""
    meta = handle.metadata()
    fractional = any(abs(ds - round(ds)) > 1e-9 for ds in meta.level_downsamples)
    exact = not (handle.name == OpenSlideBackend.name and fractional)
    return (len(meta.level_dimensions), int(exact))


def _close_quietly(handle: SlideBackend) -> None:
    try:
        handle.close()
    except Exception:  # a handle that failed its probe may not close cleanly either
        pass


def _check_file(path: Path) -> None:
    if not path.exists():
        raise SlideError(path, "no such file")
    if path.is_dir():
        raise SlideError(path, "is a directory, not a slide file")
    if path.stat().st_size == 0:
        raise SlideError(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise SlideError(path, "permission denied")


def _auto_tiers(path: Path) -> list[list[type[SlideBackend]]]:
    """The readers ``auto`` tries, in tiers: both slide libraries, then for a TIFF neither of
    them opens, the plain-image reader. PNG/JPEG/BMP go straight to the plain-image reader."""
    if path.name.lower().endswith(_PLAIN_ONLY_SUFFIXES):
        return [[ImageBackend]]
    tiers: list[list[type[SlideBackend]]] = [[OpenSlideBackend, TiffSlideBackend]]
    if path.name.lower().endswith(TIFF_SUFFIXES):
        tiers.append([ImageBackend])
    return tiers


def _probe(handle: SlideBackend) -> None:
    """Read one pixel at both far corners of the first and last level.

    Headers sit at the start of a file and the last tiles at its end, so a truncated or
    corrupt file fails here, at open, with its path, rather than halfway through a batch.
    Four 1-pixel reads decode at most four tiles or strips, so probing costs the same
    whatever the slide's size (the backends read lazily; none decodes a whole level to open).
    """
    meta = handle.metadata()
    if not meta.level_dimensions or min(min(d) for d in meta.level_dimensions) <= 0:
        raise ValueError("the file has no image levels")
    for level in {0, len(meta.level_dimensions) - 1}:
        w, h = meta.level_dimensions[level]
        for x, y in ((0, 0), (w - 1, h - 1)):
            handle.read_level(level, x, y, 1, 1)
