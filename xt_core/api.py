"""One slide, as lab scripts call it: the work of ``xt-slide classify / segment``.

.. code-block:: python

    import xt_core

    record = xt_core.classify_slide("slide.svs", model="models/lung")        # a dict
    record = xt_core.segment_slide("slide.svs", model="models/lung", out_dir="out", mpp=0.25)

Each returns the record the CLI writes (see :func:`xt_core.outputs.records.slide_record`).
``model`` is a checkpoint folder (or its ``model.safetensors``), an :class:`XTModel` already
loaded, or None for the bundled default model. How the slide is read and the model run is one
:class:`~xt_core.settings.RunSettings` (``settings=``), or keyword overrides of its fields.
Many slides: :func:`xt_core.batch.run_batch`.
"""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from xt_core.errors import ModelFileError, NoDefaultModelError
from xt_core.outputs.records import output_names, slide_record, slide_stem
from xt_core.settings import OptionError, RunSettings

if TYPE_CHECKING:
    from xt_core.inference import ProgressCallback
    from xt_core.models.xt import XTModel

__all__ = [
    "OptionError",
    "analyse_slide",
    "classify_slide",
    "load_default_model",
    "resolve_model",
    "segment_slide",
]

# ----------------------------------------------------------------------------- models
def resolve_model(model: "XTModel | str | os.PathLike | None" = None) -> "XTModel":
    """An :class:`XTModel` from a model object, a checkpoint path, or None (the bundled default).

    The default comes from ``xt_core.models.default.default_model_path()`` where this install
    has one; otherwise a :class:`ModelFileError` says that a model must be given.
    """
    if model is None:
        model = _default_model_path()  # before torch is imported: a missing default fails fast
    from xt_core.models.checkpoint import load_model
    from xt_core.models.xt import XTModel

    if isinstance(model, XTModel):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    raise TypeError(f"model must be an XTModel, a checkpoint path or None, not {type(model).__name__}")


def load_default_model() -> "XTModel":
    """The bundled default model (:class:`ModelFileError` when this install has none)."""
    return resolve_model(None)


def _default_model_path() -> Any:
    import importlib

    try:
        default_module = importlib.import_module("xt_core.models.default")
    except ModuleNotFoundError as exc:
        if exc.name not in ("xt_core.models.default",):
            raise
        raise NoDefaultModelError() from None
    finder = getattr(default_module, "default_model_path", None)
    if finder is None:
        raise NoDefaultModelError()
    path = finder()
    if path is None:
        raise NoDefaultModelError()
    return path


# ----------------------------------------------------------------------------- one slide
def classify_slide(
    path: str | os.PathLike,
    model: "XTModel | str | os.PathLike | None" = None,
    *,
    out_dir: str | os.PathLike | None = None,
    settings: RunSettings | None = None,
    progress: "ProgressCallback | None" = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Classify one slide; returns its record and, with ``out_dir``, writes ``<out_dir>/<name>.json``.

    ``settings`` (or keyword ``overrides`` of its fields, e.g. ``mpp=0.25``) says how the slide
    is read and the model run; ``progress(done, total)`` follows the regions.
    """
    settings = RunSettings.build(settings, **overrides)
    return analyse_slide(path, resolve_model(model), settings, segment=False,
                         out_dir=Path(out_dir) if out_dir is not None else None, progress=progress)


def segment_slide(
    path: str | os.PathLike,
    model: "XTModel | str | os.PathLike | None" = None,
    *,
    out_dir: str | os.PathLike = ".",
    settings: RunSettings | None = None,
    progress: "ProgressCallback | None" = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Classify and segment one slide, writing into ``out_dir``: ``<name>.heatmap.ome.tif``
    (per-class probabilities, or argmax with ``labels``), ``<name>.preview.png``, ``<name>.geojson``
    (polygons where a class's probability > ``threshold``) and, last, ``<name>.json``.

    Returns the record (as written to the JSON). Other arguments as :func:`classify_slide`.
    """
    settings = RunSettings.build(settings, **overrides)
    model = resolve_model(model)
    check_segmentation(model)
    return analyse_slide(path, model, settings, segment=True, out_dir=Path(out_dir), progress=progress)


def check_segmentation(model: "XTModel") -> None:
    """Raise :class:`ModelFileError` for a model without a segmentation head."""
    if not model.config.segmentation:
        where = getattr(model, "checkpoint_path", None) or model.config.name
        raise ModelFileError(where, "this model has no segmentation head; it can classify, not segment")


def analyse_slide(path: str | os.PathLike, model: "XTModel", settings: RunSettings, *, segment: bool,
                  out_dir: Path | None, progress: "ProgressCallback | None" = None) -> dict[str, Any]:
    """Open, predict, write the outputs (the JSON last); return the record.

    The one path every face takes for one slide: ``classify``/``segment``, a batch, a Dask worker.
    """
    from xt_core.inference import predict_slide
    from xt_core.outputs.atomic import write_json
    from xt_core.slide import open_slide

    t_start = time.perf_counter()
    names = output_names(slide_stem(path), segment)
    if out_dir is not None:
        remove_stale_temporaries(out_dir, names.values())
    with open_slide(path, backend=settings.backend, mpp=settings.mpp, force_mpp=settings.force_mpp) as slide:
        t_open = time.perf_counter() - t_start
        result = predict_slide(model, slide, settings, progress=progress)
        t0 = time.perf_counter()
        if segment:
            assert out_dir is not None
            _write_segmentation(slide, result, names, out_dir, settings)
        t_outputs = time.perf_counter() - t0
        wall = time.perf_counter() - t_start
        record = slide_record(result, model, slide=slide, outputs=names if out_dir is not None else None,
                              extra_timing={"open": t_open, "outputs": t_outputs, "wall": wall})
    if out_dir is not None:
        write_json(out_dir / names["json"], record)
    return record


def _write_segmentation(slide, result, names: dict[str, str], out_dir: Path, s: RunSettings) -> None:
    from xt_core.outputs.geojson import write_geojson
    from xt_core.outputs.heatmap_png import write_heatmap_png
    from xt_core.outputs.heatmap_tiff import write_heatmap_tiff

    if result.heatmap is None:
        raise ModelFileError(result.slide, "the model gave no segmentation for this slide")
    stem = slide_stem(slide.path)
    write_heatmap_tiff(out_dir / names["heatmap"], result.heatmap, result.classes, result.token_size, slide.mpp,
                       labels=s.labels, origin=result.origin, name=stem)
    thumb = slide.get_thumbnail(s.preview_size)
    title = stem if result.prediction is None else f"{stem}: {result.prediction}"
    write_heatmap_png(out_dir / names["preview"], thumb, result.heatmap, result.classes, result.token_size,
                      slide.dimensions, origin=result.origin, tissue=result.tissue.mask, title=title)
    write_geojson(out_dir / names["geojson"], result.heatmap, result.classes, result.token_size,
                  origin=result.origin, bounds=slide.dimensions, threshold=s.threshold)


def remove_stale_temporaries(out_dir: Path, names: Iterable[str]) -> None:
    """Delete temporaries a killed run left for these outputs (``.<name>.<random><suffix>``)."""
    if not out_dir.is_dir():
        return
    for name in names:
        for stale in out_dir.glob(f".{glob.escape(name)}.*"):
            try:
                stale.unlink()
            except OSError:
                pass
