"""npe2 reader: a whole-slide image as a lazy, multiscale, RGB napari image layer.

Every pyramid level of the slide becomes one dask array of ``TILE``-pixel tiles; a tile is
read with :meth:`xt_core.slide.Slide.read_region` only when napari displays it. One
:class:`~xt_core.slide.Slide` is opened per layer and shared by all its tiles (its reads
are thread-safe). When the slide's pixel size is known the layer is placed in micrometres
(``scale = (mpp_y, mpp_x)``, ``units = ("um", "um")``) so that overlays line up physically;
otherwise in pixels.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any, Callable

import dask.array as da
import numpy as np

from xt_core.slide import Slide, open_slide

log = logging.getLogger(__name__)

#: Side of the square tiles each pyramid level is read in, in level pixels.
TILE = 512
#: When even the slide's coarsest level is longer than this, 2x coarser levels are added
#: (block means of the previous level) so napari never loads a huge array when zoomed out.
MAX_COARSEST_SIDE = 4096

LayerData = tuple[Any, dict[str, Any], str]


def napari_get_reader(path: str | os.PathLike | list) -> Callable[..., list[LayerData]] | None:
    """The reader for ``path`` if it is one slide file that :func:`open_slide` can open, else None.

    Never raises: returning None lets napari try its other readers.
    """
    if not isinstance(path, (str, os.PathLike)):
        return None  # a list of paths (stack): not ours
    try:
        if not Path(path).is_file():
            return None
        slide = open_slide(path)  # header + corner pixels: cheap, and catches broken files
    except Exception as exc:  # SlideError for anything unreadable; never fail napari's probing
        log.debug("napari-xt cannot read %s: %s", path, exc)
        return None

    def read_slide(path_arg: str | os.PathLike | list = path) -> list[LayerData]:
        if isinstance(path_arg, (str, os.PathLike)) and Path(path_arg) != Path(path):
            return [slide_layer_data(open_slide(path_arg))]
        return [slide_layer_data(slide)]

    return read_slide


def slide_layer_data(
    slide: Slide, tile: int = TILE, max_coarsest_side: int = MAX_COARSEST_SIDE
) -> LayerData:
    """The napari layer data tuple ``(pyramid, kwargs, "image")`` of an open slide."""
    levels = slide_pyramid(slide, tile=tile, max_coarsest_side=max_coarsest_side)
    kwargs: dict[str, Any] = {
        "name": slide.name,
        "rgb": True,
        "multiscale": True,
        "contrast_limits": (0, 255),
        "metadata": {
            "path": str(slide.path),
            "slide_info": slide.info(),
            "synthetic_levels": len(levels) - slide.level_count,
        },
    }
    if slide.mpp is not None:
        mpp_x, mpp_y = slide.mpp
        kwargs["scale"] = (mpp_y, mpp_x)
        kwargs["units"] = ("um", "um")
    else:
        kwargs["scale"] = (1.0, 1.0)
    return (levels, kwargs, "image")


def slide_pyramid(
    slide: Slide, tile: int = TILE, max_coarsest_side: int = MAX_COARSEST_SIDE
) -> list[da.Array]:
    """One lazy ``(h, w, 3)`` uint8 dask array per level, finest first.

    The slide's own levels come first; if the coarsest is still longer than
    ``max_coarsest_side``, 2x block-mean levels follow until it is not.
    """
    token = uuid.uuid4().hex  # unique dask names: napari's dask cache must never mix slides
    levels = [_level_array(slide, level, tile, f"xt-slide-{token}-level{level}") for level in range(slide.level_count)]
    while max(levels[-1].shape[:2]) > max_coarsest_side and min(levels[-1].shape[:2]) >= 2:
        coarser = da.coarsen(np.mean, levels[-1], {0: 2, 1: 2}, trim_excess=True)
        levels.append(coarser.round().astype(np.uint8).rechunk((tile, tile, 3)))
    return levels


def _level_array(slide: Slide, level: int, tile: int, name: str) -> da.Array:
    width, height = slide.level_dimensions[level]
    downsample = slide.level_downsamples[level]

    def read_tile(block_info: dict | None = None) -> np.ndarray:
        (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
        # read_region takes the corner in level-0 pixels and rounds it back to this level
        return slide.read_region((x0 * downsample, y0 * downsample), level, (x1 - x0, y1 - y0))

    return da.map_blocks(
        read_tile,
        chunks=(_chunks(height, tile), _chunks(width, tile), (3,)),
        dtype=np.uint8,
        meta=np.empty((0, 0, 0), dtype=np.uint8),
        name=name,
    )


def _chunks(size: int, tile: int) -> tuple[int, ...]:
    full, rest = divmod(size, tile)
    return (tile,) * full + ((rest,) if rest else ())
