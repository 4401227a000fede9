"""napari-xt: a thin napari plugin over :mod:`xt_core` (reader, sample data, widgets).

Nothing heavy is imported here: napari imports this package to read the manifest, and
each contribution module (``_reader``, ``_sample_data``...) is imported only when used.
"""

from xt_core import __version__, runtime

# Before torch is imported (the widget imports it on first use): waiting OpenMP threads sleep, so
# napari's GUI thread and the slide readers get a core while the model runs (xt_core.runtime).
runtime.prepare_process()

__all__ = ["__version__"]
