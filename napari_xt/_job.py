"""One analysis run as the worker thread does it: load (or reuse) the model, read, predict, report.

No Qt here: the run talks to the dock only through ``emit(kind, payload)`` and a ``stop``
event, so it can be tested without a GUI. ``predict_slide``'s callbacks give the dock what
it needs while the slide is read: the tissue mask, the grid (to place the preview), every
batch's preview probabilities and the progress. Each callback checks ``stop`` and raises
:class:`RunCancelled`, so Cancel (or closing the slide) ends the run after the batch being
encoded, well within a second. Expected failures (bad model, unreadable slide, no pixel
size, no tissue) come back as a message, not an exception: the dock shows them as a
notification and is ready for the next run.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from xt_core.errors import XTError
from xt_core.settings import RunSettings

if TYPE_CHECKING:
    from napari_xt._models import ModelCache
    from xt_core.inference import SlideResult
    from xt_core.models.xt import XTModel
    from xt_core.tokenize import RegionGrid

#: ``emit(kind, payload)``: ``stage`` (str), ``tissue`` (TissueMask), ``grid`` (GridInfo),
#: ``batch`` ((rows, cols, probabilities or None)), ``progress`` ((done, total)).
Emit = Callable[[str, Any], None]


class RunCancelled(Exception):
    """The user cancelled the run (or closed its slide): raised inside the engine's callbacks."""


@dataclass(frozen=True)
class RunRequest:
    """Everything one run needs, fixed when the user presses Analyse."""

    slide_path: str
    model_key: str
    settings: RunSettings
    polygons: tuple[np.ndarray, ...] | None = None  # level-0 (x, y) outlines; None: the whole slide
    scope: str = "whole slide"


@dataclass(frozen=True)
class GridInfo:
    """The grid of a run, as soon as it is known: where preview blocks go and how many regions come."""

    grid: "RegionGrid"
    side: int  # heatmap pixels along one side of a region (tokens x segmentation upsampling)
    regions: int  # regions the run encodes

    @property
    def token_size(self) -> tuple[float, float]:
        w, h = self.grid.region_size_level0
        return (w / self.side, h / self.side)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.grid.rows * self.side, self.grid.cols * self.side)


@dataclass
class RunOutcome:
    """A finished run: the result (ROI tokens only), or why there is none."""

    request: RunRequest
    result: "SlideResult | None" = None
    model: "XTModel | None" = None
    error: str | None = None
    cancelled: bool = False
    seconds: float = 0.0


def run_analysis(request: RunRequest, models: "ModelCache", emit: Emit, stop: threading.Event) -> RunOutcome:
    """Run ``request`` to the end, or until ``stop`` is set; never raises for expected failures."""
    t0 = time.perf_counter()
    outcome = RunOutcome(request)
    _warm_up()
    try:
        result, model = _run(request, models, emit, stop)
    except RunCancelled:
        outcome.cancelled = True
    except XTError as exc:
        outcome.error = str(exc)
    else:
        outcome.result, outcome.model = result, model
    outcome.seconds = time.perf_counter() - t0
    return outcome


def _run(request: RunRequest, models: "ModelCache", emit: Emit, stop: threading.Event):
    from xt_core.inference import predict_slide
    from xt_core.preview import region_probabilities
    from xt_core.roi import regions_in_shapes
    from xt_core.slide import open_slide
    from xt_core.tissue import tissue_mask

    def check() -> None:
        if stop.is_set():
            raise RunCancelled()

    s = request.settings
    if not models.holds(request.model_key):
        emit("stage", "loading the model...")
    model = models.get(request.model_key)
    check()
    with open_slide(request.slide_path, backend=s.backend, mpp=s.mpp, force_mpp=s.force_mpp) as slide:
        emit("stage", "finding tissue...")
        tissue = tissue_mask(slide)
        check()
        emit("tissue", tissue)
        threshold = s.region_threshold(model.config.tissue_threshold)

        def select(grid: "RegionGrid") -> np.ndarray:
            check()
            chosen = np.ones(grid.n_regions, bool) if request.polygons is None else regions_in_shapes(grid, request.polygons)
            n = int(np.count_nonzero(chosen[grid.tissue_indices(threshold)]))  # what predict_slide will encode
            emit("grid", GridInfo(grid, model.heatmap_side, n))
            emit("stage", f"reading {n} regions...")
            return chosen

        def on_batch(rows: np.ndarray, cols: np.ndarray, tokens: Any) -> None:
            check()
            emit("batch", (np.asarray(rows).copy(), np.asarray(cols).copy(), region_probabilities(model, tokens)))

        def progress(done: int, total: int) -> None:
            emit("progress", (done, total))
            if done == total:
                emit("stage", "reading the slide as a whole (context encoder)...")
            check()

        # Catch inside the `with`: leaving the handler frees the traceback, so the reader
        # threads are joined here, before the slide they read from is closed.
        failure: Exception | None = None
        try:
            result = predict_slide(model, slide, s, tissue=tissue, progress=progress, on_batch=on_batch, select=select)
        except (RunCancelled, XTError) as exc:
            failure = _detached(exc)
    if failure is not None:
        raise failure
    return _only_roi_tokens(result, request.polygons), model


def _warm_up() -> None:
    """Import here, off the GUI thread, what the dock's first layers need (pandas, for the classes
    layer's features: 0.3 s that would otherwise freeze the viewer when the preview appears)."""
    import pandas  # noqa: F401


def _only_roi_tokens(result: "SlideResult", polygons: tuple[np.ndarray, ...] | None) -> "SlideResult":
    """An ROI run encodes whole regions; keep the heatmap only on the tokens under the shapes."""
    if polygons is None or result.heatmap is None:
        return result
    from xt_core.roi import tokens_in_shapes

    inside = tokens_in_shapes(result.heatmap.shape[:2], result.token_size, polygons, result.origin)
    heat = np.where(inside[..., None], result.heatmap, np.nan).astype(np.float32)
    return dataclasses.replace(result, heatmap=heat)


def _detached(exc: Exception) -> Exception:
    """The same error without its traceback (whose frames would keep the reader threads alive)."""
    exc.__traceback__ = None
    exc.__context__ = None
    return exc
