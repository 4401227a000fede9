"""xt_core: the xT whole-slide engine (slides -> regions -> features -> context -> heads).

No GUI imports here; napari_xt is a thin face over this package.
"""

from xt_core.errors import MissingMppError, ModelFileError, SlideError, XTError
from xt_core.slide import Slide, open_slide

__version__ = "0.1.0"

__all__ = ["MissingMppError", "ModelFileError", "Slide", "SlideError", "XTError", "__version__", "open_slide"]

_API = ("classify_slide", "segment_slide", "run_batch")


def __getattr__(name: str):
    # The lab-script API, imported on first use so that `import xt_core` stays light (no torch).
    if name in _API:
        from xt_core import api

        return getattr(api, name)
    raise AttributeError(f"module 'xt_core' has no attribute {name!r}")
