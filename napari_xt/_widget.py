"""The napari-xt dock ("xT slide analysis"): run an xT model on an open slide, interactively.

napari builds the dock itself (Plugins menu, ``add_plugin_dock_widget``) and hands it the
viewer through the parameter named ``napari_viewer``; the annotation is a real class, not a
string, so the injection works either way.

What happens on Analyse, and why it is built this way:

* the run (:func:`napari_xt._job.run_analysis`) goes to napari's ``thread_worker`` so the
  viewer stays responsive; its reports come back through a queued Qt signal, and the dock
  only does cheap work with them (a few array writes, one layer refresh every 150 ms at most);
* progress shows in the dock (regions done of all, time left) and in napari's activity panel
  (:class:`napari.utils.progress`); Cancel sets a flag the run checks after every batch;
* the heatmap grows while regions are encoded (the segmentation head on each batch's tokens,
  before context) and is replaced by the context encoder's result at the end;
* the model is loaded by the first run and kept until another is chosen;
* whatever goes wrong (bad model folder, unreadable slide, no pixel size, the slide layer
  closed mid-run) ends in a notification and a dock ready for the next run.
"""

import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import napari
import napari.viewer
import numpy as np
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, QSize, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_xt._export import ShownResult, export_geojson, export_heatmap, export_record
from napari_xt._job import GridInfo, RunOutcome, RunRequest, run_analysis
from napari_xt._layers import (
    DisplayGrid,
    Placement,
    classes_layer,
    probability_layers,
    regions_layer,
    tissue_layer,
)
from napari_xt._models import DEFAULT_KEY, ModelCache, ModelInfo, describe_model
from napari_xt._panel import ClassTable, WrappedLabel
from napari_xt._roi import shapes_polygons, view_polygon
from xt_core.errors import XTError
from xt_core.preview import place_regions
from xt_core.roi import boxes_in_polygons
from xt_core.settings import DEVICE_CHOICES, RunSettings

SCOPES = ("whole slide", "field of view", "shapes")
CHOOSE_FOLDER = "choose a model folder..."
#: The preview layer is refreshed at most this often (ms): enough to watch it grow, cheap for the GUI.
REFRESH_MS = 150


class _Relay(QObject):
    """Carries the worker's reports to the GUI thread: ``(run id, kind, payload)``, queued.

    Not parented to the dock: a run still going when the dock is closed keeps it alive
    (reports then reach no one) instead of emitting into a deleted object.
    """

    report = Signal(int, str, object)


class _Refusal(Exception):
    """A run that cannot start with the controls as they are (the message says what to do)."""


@dataclass
class _ActiveRun:
    ident: int
    request: RunRequest
    info: ModelInfo
    slide_layer: Any
    placement: Placement
    stop: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.perf_counter)
    pbar: Any = None
    worker: Any = None
    grid: GridInfo | None = None
    preview: np.ndarray | None = None  # token labels (segmentation) or regions done (classification only)
    preview_layer: Any = None
    encode_started: float | None = None
    stop_reason: str | None = None
    partial_updates: int = 0  # preview refreshes drawn before the result (tests look at this)
    ended: bool = False  # the worker returned: no preview may be drawn any more


class XTWidget(QWidget):
    """Pick a slide, a model and what to analyse; press Analyse; watch the heatmap grow; save it."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = napari_viewer
        self._models = ModelCache()
        self._model_info: ModelInfo | None = None
        self._run: _ActiveRun | None = None
        self._runs = 0
        self._shown: ShownResult | None = None
        self._shown_layer: Any = None
        self._shown_slide: Any = None
        self._relay = _Relay()
        self._relay.report.connect(self._on_report)
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(REFRESH_MS)
        self._refresh_timer.timeout.connect(self._refresh_preview)
        self._build()
        layers = napari_viewer.layers
        layers.events.inserted.connect(self._on_layers_changed)
        layers.events.removed.connect(self._on_layer_removed)
        self._on_layers_changed()
        self._select_initial_model()

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        # Everything sits in a scroll area: the dock never forces napari's window to grow taller,
        # and its width is the dock's, not that of its longest text.
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        self.setMinimumWidth(260)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        content = QWidget()
        content.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        scroll.setWidget(content)
        root = QVBoxLayout(self)
        root.setContentsMargins(0, 0, 0, 0)
        root.addWidget(scroll)
        outer = QVBoxLayout(content)

        run_box = QGroupBox("Analyse")
        form = QFormLayout(run_box)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self._slide = _combo()
        self._slide.currentIndexChanged.connect(self._on_slide_changed)
        form.addRow("slide", self._slide)
        self._model = _combo()
        self._model.activated.connect(self._on_model_activated)
        form.addRow("model", self._model)
        self._model_card = WrappedLabel(rich=True)
        form.addRow(self._model_card)
        self._scope = _combo()
        self._scope.addItems(SCOPES)
        self._scope.currentIndexChanged.connect(self._on_scope_changed)
        form.addRow("analyse", self._scope)
        self._shapes = _combo()
        self._shapes.setToolTip("a Shapes layer: its rectangles, polygons and ellipses are analysed")
        form.addRow("shapes layer", self._shapes)

        self._mpp = QDoubleSpinBox()
        self._mpp.setRange(0.0, 100.0)
        self._mpp.setDecimals(4)
        self._mpp.setSingleStep(0.05)
        self._mpp.setSpecialValueText("from the slide")
        self._mpp.setSuffix(" um/px")
        self._mpp.setToolTip("the slide's pixel size, for files without one (replaces the file's value when set)")
        form.addRow("pixel size", self._mpp)
        self._target = QDoubleSpinBox()
        self._target.setRange(0.0, 64.0)
        self._target.setDecimals(3)
        self._target.setSingleStep(0.25)
        self._target.setSpecialValueText("the model's")
        self._target.setSuffix(" um/px")
        self._target.setToolTip("the resolution regions are read at (the model was trained at its own)")
        form.addRow("target resolution", self._target)
        self._tissue = QDoubleSpinBox()
        self._tissue.setRange(0.0, 1.0)
        self._tissue.setDecimals(2)
        self._tissue.setSingleStep(0.05)
        self._tissue.setToolTip("the tissue fraction a region needs to be analysed")
        form.addRow("tissue threshold", self._tissue)
        self._device = _combo()
        self._device.addItems(list(DEVICE_CHOICES))
        form.addRow("device", self._device)
        self._batch = QSpinBox()
        self._batch.setRange(0, 256)
        self._batch.setSpecialValueText("auto")  # 0: the engine's choice (RunSettings.regions_per_batch)
        self._batch.setValue(0)
        self._batch.setToolTip("regions per forward pass; auto: 0.4 megapixels' worth (8 regions of 224 px)")
        form.addRow("batch size", self._batch)
        self._controls = run_box
        outer.addWidget(run_box)

        buttons = QHBoxLayout()
        self._analyse = QPushButton("Analyse")
        self._analyse.clicked.connect(self.start)
        self._cancel = QPushButton("Cancel")
        self._cancel.setEnabled(False)
        self._cancel.clicked.connect(self.cancel)
        buttons.addWidget(self._analyse)
        buttons.addWidget(self._cancel)
        outer.addLayout(buttons)
        self._bar = QProgressBar()
        self._bar.setRange(0, 1)
        self._bar.setValue(0)
        self._bar.setFormat("")
        outer.addWidget(self._bar)
        self._eta = QLabel("")
        outer.addWidget(self._eta)
        self._status = WrappedLabel()
        outer.addWidget(self._status)

        results = QGroupBox("Result")
        rform = QFormLayout(results)
        self._table = ClassTable()
        rform.addRow(self._table)
        self._opacity = QSlider(Qt.Orientation.Horizontal)
        self._opacity.setRange(0, 100)
        self._opacity.setValue(50)
        self._opacity.valueChanged.connect(self._on_opacity)
        rform.addRow("opacity", self._opacity)
        self._threshold = QDoubleSpinBox()
        self._threshold.setRange(0.0, 0.99)
        self._threshold.setSingleStep(0.05)
        self._threshold.setDecimals(2)
        self._threshold.setToolTip("tokens whose most likely class is less probable than this are not painted (nor exported)")
        self._threshold.valueChanged.connect(self._on_threshold)
        rform.addRow("min. probability", self._threshold)
        saves = QHBoxLayout()
        saves.addWidget(QLabel("save"))
        self._save_json = QPushButton("JSON")
        self._save_json.setToolTip("the run's record: model, probabilities, grid, timings, region of interest")
        self._save_json.clicked.connect(partial(self._save_dialog, "json"))
        self._save_tiff = QPushButton("OME-TIFF")
        self._save_tiff.setToolTip("per-class probability heatmap, pyramidal OME-TIFF with its physical pixel size")
        self._save_tiff.clicked.connect(partial(self._save_dialog, "tiff"))
        self._save_geojson = QPushButton("GeoJSON")
        self._save_geojson.setToolTip("the classes shown, as QuPath annotations (level-0 pixels)")
        self._save_geojson.clicked.connect(partial(self._save_dialog, "geojson"))
        for button in (self._save_json, self._save_tiff, self._save_geojson):
            saves.addWidget(button)
        rform.addRow(saves)
        outer.addWidget(results)
        outer.addStretch(1)
        self._update_buttons()

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        return QSize(360, 720)

    # ------------------------------------------------------------------ choices
    def _on_layers_changed(self, *_: Any) -> None:
        _refill(self._slide, [layer for layer in self._viewer.layers if "slide_info" in getattr(layer, "metadata", {})])
        _refill(self._shapes, [layer for layer in self._viewer.layers if isinstance(layer, napari.layers.Shapes)])
        self._on_scope_changed()

    def _on_scope_changed(self, *_: Any) -> None:
        self._shapes.setEnabled(self._scope.currentText() == "shapes")

    def _on_slide_changed(self, *_: Any) -> None:
        layer = self._slide.currentData()
        if layer is not None and not layer.metadata["slide_info"].get("mpp") and self._run is None:
            self._set_status(f"{layer.name} has no pixel size in its file: enter it as 'pixel size' "
                             "(the scanner's value, e.g. 0.25 for 40x, 0.5 for 20x).")

    def _select_initial_model(self) -> None:
        try:
            info = describe_model(DEFAULT_KEY)
        except XTError:
            self._model.addItem(CHOOSE_FOLDER, None)
            self._model_card.set_text("no bundled model in this install: choose a model folder")
            return
        self._model.addItem(CHOOSE_FOLDER, None)
        self._use_model(info)

    def _on_model_activated(self, index: int) -> None:
        key = self._model.itemData(index)
        if key is None:
            folder = QFileDialog.getExistingDirectory(self, "Model folder (model.safetensors + config.json)")
            if not folder:
                self._show_current_model()
                return
            key = folder
        self.set_model(key)

    def set_model(self, key: str | Path) -> bool:
        """Choose the model: ``"default"`` (the bundled one) or a checkpoint folder.

        Shows its card at once (from its config); its weights are loaded by the next run and
        kept. A folder that is not a model is refused with a notification.
        """
        try:
            info = describe_model(str(key))
        except XTError as exc:
            self._fail(f"model: {exc}")
            self._show_current_model()
            return False
        self._use_model(info)
        return True

    def _use_model(self, info: ModelInfo) -> None:
        if self._model_info is None or info.key != self._model_info.key:
            self._models.forget()  # the previous model's memory goes now, the new one loads on Analyse
        self._model_info = info
        if self._model.findData(info.key) < 0:
            label = f"bundled: {info.name}" if info.is_default else f"{info.name} ({Path(info.key).name})"
            self._model.insertItem(self._model.count() - 1, label, info.key)
        self._show_current_model()
        self._model_card.set_text(info.card_html())
        self._model_card.setToolTip(info.description)
        self._target.setValue(info.target_mpp or 0.0)
        self._tissue.setValue(info.tissue_threshold)
        if self._shown is None:
            self._table.show_classes(info.classes)

    def _show_current_model(self) -> None:
        if self._model_info is not None:
            self._model.setCurrentIndex(self._model.findData(self._model_info.key))

    # ------------------------------------------------------------------ running
    @property
    def running(self) -> bool:
        return self._run is not None

    def start(self) -> None:
        """Start a run with the controls as they are (the Analyse button)."""
        if self._run is not None:
            return
        try:
            request, layer = self._request()
        except _Refusal as exc:
            self._fail(str(exc))
            return
        self._runs += 1
        assert self._model_info is not None
        run = _ActiveRun(self._runs, request, self._model_info, layer, Placement.of_layer(layer))
        from napari.qt.threading import create_worker

        emit: Callable[[str, Any], None] = partial(self._relay.report.emit, run.ident)
        worker = create_worker(run_analysis, request, self._models, emit, run.stop, _start_thread=False)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        run.worker = worker
        run.pbar = progress(total=0, desc=f"xT: {layer.name}")
        self.destroyed.connect(run.stop.set)  # the dock closed mid-run: let the run end
        self._run = run
        self._bar.setRange(0, 0)  # busy until the number of regions is known
        self._bar.setFormat("%v / %m regions")
        self._eta.setText("")
        self._set_status(f"{layer.name} ({request.scope}): starting...")
        self._update_buttons()
        worker.start()

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop the run after the batch being encoded (the Cancel button)."""
        run = self._run
        if run is None or run.stop.is_set():
            return
        run.stop_reason = reason
        run.stop.set()
        self._set_status(f"{run.slide_layer.name}: stopping...")
        self._cancel.setEnabled(False)

    def _request(self) -> tuple[RunRequest, Any]:
        layer = self._slide.currentData()
        if layer is None or layer not in self._viewer.layers:
            raise _Refusal("open a slide first (File > Open, or File > Open Sample > napari-xt)")
        info = self._model_info
        if info is None:
            raise _Refusal("choose a model first")
        slide_mpp = layer.metadata["slide_info"].get("mpp")
        mpp = float(self._mpp.value()) or None
        target = float(self._target.value()) or None
        if slide_mpp is None and mpp is None and (target or info.target_mpp) is not None:
            raise _Refusal(f"{layer.name}: the slide has no pixel size (microns per pixel) in its file; "
                           "enter it as 'pixel size' (the scanner's value, e.g. 0.25 for 40x, 0.5 for 20x)")
        try:
            settings = RunSettings(mpp=mpp, force_mpp=bool(mpp and slide_mpp), target_mpp=target,
                                   tissue_threshold=float(self._tissue.value()), device=self._device.currentText(),
                                   batch_size=int(self._batch.value()) or None)
        except XTError as exc:
            raise _Refusal(str(exc)) from None
        placement = Placement.of_layer(layer)
        scope = self._scope.currentText()
        polygons = None
        if scope == "field of view":
            polygons = (view_polygon(self._viewer, placement),)
        elif scope == "shapes":
            shapes = self._shapes.currentData()
            if shapes is None or shapes not in self._viewer.layers:
                raise _Refusal("add a Shapes layer and draw the regions to analyse (rectangles or polygons)")
            polygons = tuple(shapes_polygons(shapes, placement))
            if not polygons:
                raise _Refusal(f"draw a rectangle, polygon or ellipse in '{shapes.name}' first")
            scope = f"{len(polygons)} shape{'s' if len(polygons) > 1 else ''} of '{shapes.name}'"
        if polygons is not None:
            w, h = layer.metadata["slide_info"]["level_dimensions"][0]
            if not boxes_in_polygons([(0, 0, w, h)], polygons)[0]:
                raise _Refusal(f"{layer.name}: the {scope} lies outside the slide")
        return RunRequest(str(layer.metadata["path"]), info.key, settings, polygons, scope), layer

    # ------------------------------------------------------------------ reports from the run
    def _on_report(self, ident: int, kind: str, payload: Any) -> None:
        run = self._run
        if run is None or ident != run.ident or (run.stop.is_set() and kind != "stage"):
            return  # a report of an earlier run, or of one being stopped
        if kind == "stage":
            if not run.stop.is_set():
                self._set_status(f"{run.slide_layer.name} ({run.request.scope}): {payload}")
        elif kind == "tissue":
            self._add_or_replace(tissue_layer(payload, run.placement, f"{run.slide_layer.name} tissue",
                                              self._meta(run, "tissue")))
        elif kind == "grid":
            run.grid = payload
            run.encode_started = time.perf_counter()
            grid = payload.grid
            segments = run.info.segmentation
            run.preview = np.zeros(payload.shape if segments else (grid.rows, grid.cols),
                                   dtype=np.uint8 if segments else bool)
            self._bar.setRange(0, max(payload.regions, 1))
            self._bar.setValue(0)
            # the (empty) preview layer now, before regions stream in: creating a layer is the
            # costly part for napari, updating its data is cheap
            self._refresh_preview()
            run.pbar.total = payload.regions  # last: napari's progress bar may process pending events
        elif kind == "batch":
            rows, cols, probs = payload
            if run.preview is None:
                return
            if probs is not None:
                labels = np.argmax(probs, axis=-1).astype(np.uint8) + 1
                labels[probs.max(axis=-1) < self._threshold.value()] = 0
                place_regions(run.preview, rows, cols, labels)
            else:
                run.preview[rows, cols] = True
            if not self._refresh_timer.isActive() and not run.ended:
                self._refresh_timer.start()
        elif kind == "progress":
            done, total = payload
            self._bar.setRange(0, max(total, 1))
            self._bar.setValue(done)
            if run.encode_started is not None and done:
                left = (time.perf_counter() - run.encode_started) / done * (total - done)
                self._eta.setText(f"{done} of {total} regions, about {_duration(left)} left" if done < total
                                  else f"{total} regions read; context encoder...")
            # last: napari's progress bar may process pending events (the run's end included)
            run.pbar.n = done
            run.pbar.update(0)

    def _refresh_preview(self) -> None:
        run = self._run
        if run is None or run.ended or run.grid is None or run.preview is None or run.stop.is_set():
            return
        grid, info = run.grid, run.info
        if info.segmentation:
            display = DisplayGrid(grid.shape, grid.token_size, (0.0, 0.0), grid.grid.slide_dimensions)
            data = classes_layer(run.preview, display, run.placement, info.classes,
                                 f"{run.slide_layer.name} xT classes", self._meta(run, "classes"),
                                 opacity=self._opacity.value() / 100)
        else:
            display = DisplayGrid((grid.grid.rows, grid.grid.cols), grid.grid.region_size_level0, (0.0, 0.0),
                                  grid.grid.slide_dimensions)
            data = regions_layer(run.preview, display, run.placement, f"{run.slide_layer.name} xT regions",
                                 self._meta(run, "regions"))
        if run.preview_layer is not None and run.preview_layer in self._viewer.layers:
            run.preview_layer.data = data[0]
            run.partial_updates += 1
        else:
            self._remove_result_layers(run.request.slide_path)
            run.preview_layer = self._add(data)

    def _on_returned(self, outcome: RunOutcome) -> None:
        run = self._run
        if run is None or outcome.request is not run.request:
            return
        # A preview refresh still queued (the timer, or a batch event handled late) must not
        # paint the pre-context preview over the result about to be shown.
        run.ended = True
        self._refresh_timer.stop()
        if outcome.cancelled:
            self._drop_preview(run)
            reason = run.stop_reason or "cancelled"
            self._set_status(f"{run.slide_layer.name}: {reason}")
            show_info(f"xT analysis of {run.slide_layer.name} {reason}")
        elif outcome.error is not None:
            self._drop_preview(run)
            self._fail(_in_dock_words(outcome.error))
        elif run.slide_layer not in self._viewer.layers:
            self._drop_preview(run)
            self._set_status(f"{run.slide_layer.name} was closed: its result was not shown")
            show_warning(f"xT: {run.slide_layer.name} was closed during the analysis; its result was not shown")
        else:
            self._show(run, outcome)

    def _on_errored(self, exc: BaseException) -> None:
        # an unexpected failure: napari's worker already shows it as a notification (traceback included)
        if self._run is not None:
            self._drop_preview(self._run)
        self._set_status(f"failed: {exc}")

    def _on_finished(self) -> None:
        run, self._run = self._run, None
        self._refresh_timer.stop()
        if run is not None:
            run.pbar.close()
            try:
                self.destroyed.disconnect(run.stop.set)
            except (TypeError, RuntimeError):
                pass
        self._bar.setRange(0, 1)
        self._bar.setValue(0)
        self._bar.setFormat("")
        self._eta.setText("")
        self._update_buttons()

    # ------------------------------------------------------------------ the result
    def _show(self, run: _ActiveRun, outcome: RunOutcome) -> None:
        result = outcome.result
        name = run.slide_layer.name
        self._shown = ShownResult(outcome, float(self._threshold.value()))
        self._shown_slide = run.slide_layer
        meta = self._meta(run, "classes") | {
            "xt_result": result.record() | {"slide_dimensions": list(result.grid.slide_dimensions)},
            "classes": list(result.classes),
        }
        self._remove_result_layers(run.request.slide_path, keep=run.preview_layer)
        if result.heatmap is not None:
            display = DisplayGrid(result.heatmap.shape[:2], result.token_size, result.origin,
                                  result.grid.slide_dimensions)
            data = classes_layer(self._shown.token_labels(), display, run.placement, result.classes,
                                 f"{name} xT classes", meta, opacity=self._opacity.value() / 100)
            for layer_data in probability_layers(result, run.placement, name, self._meta(run, "probability")):
                self._add(layer_data)
        else:
            assert run.grid is not None and run.preview is not None
            grid = run.grid.grid
            display = DisplayGrid((grid.rows, grid.cols), grid.region_size_level0, (0.0, 0.0), grid.slide_dimensions)
            data = regions_layer(run.preview, display, run.placement, f"{name} xT regions", meta)
        preview = run.preview_layer
        if preview is not None and preview in self._viewer.layers and preview.data.shape == data[0].shape:
            # the preview layer has the result's geometry and colours: it takes the result in place
            # (removing a layer and adding another costs napari far more than new data)
            preview.metadata = data[1]["metadata"]
            preview.data = data[0]
            self._shown_layer = preview
        else:
            if preview is not None and preview in self._viewer.layers:
                self._viewer.layers.remove(preview)
            self._shown_layer = self._add(data)
        self._viewer.layers.selection.active = self._shown_layer
        self._update_table()
        self._set_status(_summary(outcome, name))
        self._update_buttons()

    def _update_table(self) -> None:
        shown = self._shown
        if shown is None:
            return
        result = shown.result
        shares = None
        if result.heatmap is not None:
            analysed = ~np.isnan(result.heatmap[..., 0])
            labels = shown.token_labels()
            total = max(int(analysed.sum()), 1)
            shares = [int(np.count_nonzero(labels == i + 1)) / total for i in range(len(result.classes))]
        self._table.show_result(result.classes, result.probabilities, shares)

    def _on_threshold(self, value: float) -> None:
        shown = self._shown
        if shown is None:
            return
        shown.threshold = float(value)
        layer = self._shown_layer
        result = shown.result
        if result.heatmap is not None and layer is not None and layer in self._viewer.layers:
            display = DisplayGrid(result.heatmap.shape[:2], result.token_size, result.origin,
                                  result.grid.slide_dimensions)
            layer.data = display.expand(shown.token_labels())
        self._update_table()

    def _on_opacity(self, value: int) -> None:
        for layer in (self._shown_layer, self._run.preview_layer if self._run else None):
            if layer is not None and layer in self._viewer.layers:
                layer.opacity = value / 100

    # ------------------------------------------------------------------ saving
    def save(self, kind: str, path: str | Path) -> Path:
        """Save the result shown: ``json`` (record), ``tiff`` (heatmap OME-TIFF) or ``geojson`` (QuPath)."""
        if self._shown is None:
            raise ValueError("nothing to save yet: run an analysis first")
        writer = {"json": export_record, "tiff": export_heatmap, "geojson": export_geojson}[kind]
        return writer(self._shown, path)

    def _save_dialog(self, kind: str) -> None:
        if self._shown is None:
            return
        suffix = {"json": ".json", "tiff": ".heatmap.ome.tif", "geojson": ".geojson"}[kind]
        start = str(Path.cwd() / (self._shown.stem + suffix))
        path, _ = QFileDialog.getSaveFileName(self, f"Save the xT result ({suffix})", start)
        if not path:
            return
        try:
            written = self.save(kind, path)
        except (OSError, ValueError, XTError) as exc:
            self._fail(f"saving {path}: {exc}")
            return
        show_info(f"saved {written}")

    # ------------------------------------------------------------------ layers
    def _meta(self, run: _ActiveRun, kind: str) -> dict[str, Any]:
        return {"xt": {"kind": kind, "slide": run.request.slide_path, "scope": run.request.scope},
                "xt_placement": run.placement.to_dict()}

    def _add(self, layer_data: tuple) -> Any:
        data, kwargs, kind = layer_data
        layer = getattr(self._viewer, f"add_{kind}")(data, **kwargs)
        if kwargs.get("metadata", {}).get("xt", {}).get("kind") == "regions":
            layer.contour = 2
        return layer

    def _add_or_replace(self, layer_data: tuple) -> Any:
        kind = layer_data[1]["metadata"]["xt"]["kind"]
        slide = layer_data[1]["metadata"]["xt"]["slide"]
        for layer in list(self._viewer.layers):
            xt = layer.metadata.get("xt", {}) if isinstance(layer.metadata, dict) else {}
            if xt.get("kind") == kind and xt.get("slide") == slide:
                self._viewer.layers.remove(layer)
        return self._add(layer_data)

    def _remove_result_layers(self, slide_path: str, keep: Any = None) -> None:
        """The layers of an earlier run on this slide (a new result replaces them)."""
        for layer in list(self._viewer.layers):
            xt = layer.metadata.get("xt", {}) if isinstance(layer.metadata, dict) else {}
            if (keep is None or layer != keep) and xt.get("slide") == slide_path and xt.get("kind") in ("classes", "probability", "regions"):
                self._viewer.layers.remove(layer)

    def _drop_preview(self, run: _ActiveRun) -> None:
        if run.preview_layer is not None and run.preview_layer in self._viewer.layers:
            self._viewer.layers.remove(run.preview_layer)
        run.preview_layer = None

    def _on_layer_removed(self, event: Any) -> None:
        layer = event.value
        # layers reach the dock through napari's proxy: compare with ==, which sees through it
        if self._run is not None and self._run.slide_layer == layer:
            self.cancel("stopped: the slide layer was closed")
        if self._shown_layer is not None and self._shown_layer == layer:
            self._shown_layer = None  # the result itself stays: it can still be saved
        if self._shown_slide is not None and self._shown_slide == layer:
            self._shown, self._shown_layer, self._shown_slide = None, None, None
            if self._model_info is not None:
                self._table.show_classes(self._model_info.classes)
            self._update_buttons()
        self._on_layers_changed()

    # ------------------------------------------------------------------ state
    def _update_buttons(self) -> None:
        running = self._run is not None
        self._analyse.setEnabled(not running)
        self._cancel.setEnabled(running)
        self._controls.setEnabled(not running)
        has = self._shown is not None
        segments = has and self._shown.result.heatmap is not None
        self._save_json.setEnabled(has)
        self._save_tiff.setEnabled(segments)
        self._save_geojson.setEnabled(segments)

    def _set_status(self, text: str) -> None:
        self._status.set_text(text)

    def status(self) -> str:
        """The status line as shown (for scripts and tests)."""
        return self._status.raw_text()

    def _fail(self, message: str) -> None:
        self._set_status(f"failed: {message}")
        show_error(message)


# ----------------------------------------------------------------------------- helpers
def _combo() -> QComboBox:
    """A combo box that never asks for the width of its longest item (long layer names, paths)."""
    box = QComboBox()
    box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    box.setMinimumContentsLength(8)
    box.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
    return box


def _refill(box: QComboBox, layers: list) -> None:
    """Offer ``layers`` by name, keeping the current choice when it is still there."""
    current = box.currentData()
    box.blockSignals(True)
    box.clear()
    for layer in layers:
        box.addItem(layer.name, layer)
    # layers come through napari's public-only proxy (a new wrapper each time): == sees through it
    index = next((i for i, layer in enumerate(layers) if current is not None and layer == current), 0 if layers else -1)
    box.setCurrentIndex(index)
    box.blockSignals(False)
    now = box.currentData()
    if (now is None) != (current is None) or (now is not None and now != current):
        box.currentIndexChanged.emit(box.currentIndex())


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


def _summary(outcome: RunOutcome, name: str) -> str:
    result = outcome.result
    where = f"{name} ({outcome.request.scope})"
    regions = f"{result.regions_tissue} of {result.regions_total} regions analysed in {outcome.seconds:.1f} s"
    if result.probabilities is None:
        return f"{where}: segmentation only (no slide label); {regions}"
    p = float(np.max(result.probabilities))
    return f"{where}: {result.prediction} (p = {p:.2f}); {regions}"


def _in_dock_words(message: str) -> str:
    """Engine messages name options as the API does ('give it as mpp'); the dock's control is 'pixel size'."""
    return message.replace("give it as mpp", "enter it as 'pixel size'")
