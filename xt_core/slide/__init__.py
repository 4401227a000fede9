"""Slides: ``open_slide(path)`` gives a :class:`Slide` over OpenSlide, tiffslide or a plain image.

Knows nothing of models; returns RGB uint8 numpy arrays in level-0 coordinates.
"""

from xt_core.slide.backend import SlideBackend, SlideMetadata
from xt_core.slide.open import BACKENDS, open_slide
from xt_core.slide.slide import MPP_TOLERANCE, Slide

__all__ = ["BACKENDS", "MPP_TOLERANCE", "Slide", "SlideBackend", "SlideMetadata", "open_slide"]
