"""xt_core: the xT whole-slide engine (slides -> regions -> features -> context -> heads).

No GUI imports here; napari_xt is a thin face over this package.
"""

from xt_core.errors import MissingMppError, ModelFileError, SlideError, XTError
from xt_core.slide import Slide, open_slide

__version__ = "0.1.0"

__all__ = ["MissingMppError", "ModelFileError", "Slide", "SlideError", "XTError", "__version__", "open_slide"]
