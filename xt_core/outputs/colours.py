"""One class palette for every output: the OME-TIFF labels, the PNG preview and the GeoJSON.

Class ``i`` of a model always gets ``PALETTE[i % len(PALETTE)]``, so a class has the same
colour in the preview, in QuPath (GeoJSON ``classification.color``) and in napari. The
first eight are the Okabe-Ito colours (distinguishable with the common colour-vision
deficiencies), then a few more from Tableau's palette.
"""

from __future__ import annotations

import numpy as np

#: (r, g, b) colours, class ``i`` -> ``PALETTE[i % len(PALETTE)]``.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),    # orange
    (86, 180, 233),   # sky blue
    (0, 158, 115),    # bluish green
    (213, 94, 0),     # vermillion
    (0, 114, 178),    # blue
    (204, 121, 167),  # reddish purple
    (240, 228, 66),   # yellow
    (120, 70, 30),    # brown
    (148, 103, 189),  # purple
    (23, 190, 207),   # cyan
    (188, 189, 34),   # olive
    (127, 127, 127),  # grey
)

#: Colour of label 0 (background / not analysed) where one is drawn.
BACKGROUND_COLOUR: tuple[int, int, int] = (0, 0, 0)


def class_colour(index: int) -> tuple[int, int, int]:
    """The colour of class ``index`` (0-based)."""
    return PALETTE[index % len(PALETTE)]


def class_colours(classes: list[str] | tuple[str, ...]) -> dict[str, tuple[int, int, int]]:
    """``{class name: (r, g, b)}`` in the model's class order."""
    return {name: class_colour(i) for i, name in enumerate(classes)}


def palette_array(n: int) -> np.ndarray:
    """``(n, 3)`` uint8 colours of classes ``0..n-1``."""
    return np.array([class_colour(i) for i in range(n)], dtype=np.uint8).reshape(n, 3)
