"""The napari-xt dock widget: run an xT model on an open slide and overlay its heatmap.

The widget holds no model or slide logic: it resolves the model and runs
:func:`xt_core.inference.predict_slide` in a worker thread (napari stays responsive), then
turns the :class:`~xt_core.inference.SlideResult` into layers with
:func:`heatmap_layer_data`, placed exactly over the slide.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, SpinBox

from xt_core.outputs.colours import class_colour

if TYPE_CHECKING:
    import napari

    from xt_core.inference import SlideResult

LayerData = tuple[Any, dict[str, Any], str]
DEFAULT_MODEL = "(bundled default model)"


def heatmap_layer_data(result: "SlideResult", slide_mpp: tuple[float, float] | None) -> list[LayerData]:
    """Layers for a result: argmax classes (labels) and one probability image per class.

    The slide layer puts level-0 pixel (x, y)'s centre at ``(y * mpp_y, x * mpp_x)`` (or at
    ``(y, x)`` without a pixel size). A heatmap pixel covers ``s`` level-0 pixels, so its
    centre lies ``(s - 1) / 2`` level-0 pixels past its first one: that is the translate.
    """
    mx, my = slide_mpp if slide_mpp else (1.0, 1.0)
    sx, sy = result.token_size
    ox, oy = result.origin
    geometry = {
        "scale": (sy * my, sx * mx),
        "translate": ((oy + (sy - 1) / 2) * my, (ox + (sx - 1) / 2) * mx),
    }
    if slide_mpp:
        geometry["units"] = ("um", "um")
    name = Path(result.slide).name
    heat = result.heatmap
    analysed = ~np.isnan(heat[..., 0])
    labels = np.where(analysed, np.nanargmax(np.where(analysed[..., None], heat, 0), axis=-1) + 1, 0).astype(np.uint8)
    colours = {0: (0, 0, 0, 0)} | {i + 1: tuple(c / 255 for c in class_colour(i)) + (1.0,) for i in range(len(result.classes))}
    record = result.record() | {"slide_dimensions": list(result.grid.slide_dimensions)}
    meta = {"xt_result": record, "classes": list(result.classes)}
    layers: list[LayerData] = [
        (labels, {"name": f"{name} xT classes", "opacity": 0.45, "colormap": colours, "metadata": meta, **geometry}, "labels")
    ]
    for i, cls in enumerate(result.classes):
        prob = np.nan_to_num(heat[..., i], nan=0.0)
        layers.append((prob, {"name": f"{name} p({cls})", "colormap": "magma", "opacity": 0.5, "visible": False,
                              "contrast_limits": (0.0, 1.0), "blending": "translucent", "metadata": meta, **geometry},
                       "image"))
    return layers


def summary_text(result: "SlideResult") -> str:
    """One line per class, the prediction first: what the pathologist reads in the dock."""
    lines = [f"prediction: {result.prediction}"]
    for cls, p in sorted(zip(result.classes, result.probabilities), key=lambda cp: -cp[1]):
        lines.append(f"  {cls}: {p:.3f}")
    lines.append(f"regions analysed: {result.regions_tissue} of {result.regions_total}")
    return "\n".join(lines)


class XTWidget(Container):
    """Pick a slide layer and a model, press Analyse, get the class heatmap over the slide."""

    def __init__(self, viewer: "napari.viewer.Viewer") -> None:
        super().__init__()
        self._viewer = viewer
        self._slide_layer = ComboBox(label="slide", choices=self._slide_layers)
        self._model = FileEdit(label="model", mode="d", value="", tooltip="a checkpoint folder; empty: the bundled default model")
        self._device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self._batch = SpinBox(label="batch size", value=8, min=1, max=256)
        self._run = PushButton(text="Analyse")
        self._status = Label(value="")
        self.extend([self._slide_layer, self._model, self._device, self._batch, self._run, self._status])
        self._run.changed.connect(self._start)
        viewer.layers.events.inserted.connect(lambda *_: self._slide_layer.reset_choices())
        viewer.layers.events.removed.connect(lambda *_: self._slide_layer.reset_choices())

    def _slide_layers(self, *_: Any) -> list:
        return [layer for layer in self._viewer.layers if "slide_info" in getattr(layer, "metadata", {})]

    def _job(self):
        layer = self._slide_layer.value
        if layer is None:
            raise ValueError("open a slide first (File > Open, or the napari-xt sample)")
        model_dir = str(self._model.value) if str(self._model.value) not in ("", ".") else None
        return layer.metadata["path"], model_dir, self._device.value, int(self._batch.value)

    def analyse(self) -> "SlideResult":
        """Run the model on the chosen slide (blocking) and add the heatmap layers."""
        result = _predict(*self._job())
        self._show(result)
        return result

    def _start(self) -> None:
        from napari.qt.threading import thread_worker

        try:
            job = self._job()
        except ValueError as exc:
            self._status.value = str(exc)
            return
        self._run.enabled = False
        self._status.value = "analysing..."
        worker = thread_worker(_predict)(*job)
        worker.returned.connect(self._show)
        worker.errored.connect(lambda exc: setattr(self._status, "value", f"error: {exc}"))
        worker.finished.connect(lambda: setattr(self._run, "enabled", True))
        worker.start()

    def _show(self, result: "SlideResult") -> None:
        layer = self._slide_layer.value
        mpp = tuple(layer.metadata["slide_info"]["mpp"]) if layer.metadata["slide_info"]["mpp"] else None
        for data, kwargs, kind in heatmap_layer_data(result, mpp):
            getattr(self._viewer, f"add_{kind}")(data, **kwargs)
        self._status.value = summary_text(result)


def _predict(path: str, model_dir: str | None, device: str, batch_size: int) -> "SlideResult":
    from xt_core.api import resolve_model
    from xt_core.inference import predict_slide
    from xt_core.settings import RunSettings
    from xt_core.slide import open_slide

    model = resolve_model(model_dir)
    with open_slide(path) as slide:
        return predict_slide(model, slide, RunSettings(device=device, batch_size=batch_size))
