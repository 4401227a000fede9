"""xt_core: the xT whole-slide engine (slides -> regions -> features -> context -> heads).

No GUI imports here; napari_xt is a thin face over this package.
"""

from xt_core.errors import MissingMppError, ModelFileError, SlideError, XTError
from xt_core.settings import RunSettings
from xt_core.slide import Slide, open_slide

__version__ = "0.1.0"

__all__ = ["MissingMppError", "ModelFileError", "RunSettings", "Slide", "SlideError", "XTError", "__version__",
           "classify_slide", "open_slide", "run_batch", "segment_slide"]

# The lab-script API, imported on first use so that `import xt_core` stays light (no torch).
_LAZY = {"classify_slide": "xt_core.api", "segment_slide": "xt_core.api", "run_batch": "xt_core.batch"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xt_core' has no attribute {name!r}")
