"""``RunSettings``: how one run reads slides and drives a model, as one typed, frozen value.

Every face of the engine builds the same object: the CLI from its flags
(:func:`xt_core.cli._options.settings_from_args`), the napari widget from its controls, a lab
script by hand, a Dask worker from the pickled copy the client sent. The engine takes it whole
(``predict_slide(model, slide, settings)``, ``classify_slide(..., settings=)``,
``run_batch(..., settings=)``) instead of a dozen keyword arguments repeated at every layer.

Fields left ``None`` mean "the model's own value" (``target_mpp``, ``tissue_threshold``): the
model's config supplies defaults only, and a setting never changes the model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from xt_core.errors import XTError

__all__ = ["BACKEND_CHOICES", "BATCH_PIXELS", "DEVICE_CHOICES", "OptionError", "RunSettings"]

BACKEND_CHOICES = ("auto", "openslide", "tiffslide", "image")
DEVICE_CHOICES = ("auto", "cpu", "cuda")

#: Pixels per forward pass when the batch size is left to the engine: 8 regions of 224 px (the
#: bundled model), 2 of 512 px. Counted in pixels, not regions, so a model with larger regions
#: gets proportionally fewer per batch and the same activation memory. Larger batches are
#: faster (per-call overheads, such as waking the OpenMP threads for every layer, are paid per
#: batch: the bundled model's encoder alone on 2 CPU cores runs 245 regions/s at batch 8, 277 at
#: 16, 294 at 32) but each doubling adds its activations to the peak, and on long slides glibc's
#: heap creeps further above that (the 98k px slide peaked 1.5x the 4k one at batch 32, 1.2-1.4x
#: at 16, 1.15x at 8: README "Real slides at real scale"). So 8 by default, and
#: ``--batch-size 32`` where memory is plentiful.
BATCH_PIXELS = 8 * 224 * 224


class OptionError(XTError):
    """A run setting that cannot work (out of range, or a device this machine lacks)."""


@dataclass(frozen=True)
class RunSettings:
    """Reading, selection, compute and output settings of one run.

    Reading: ``backend`` (``auto`` picks the library that sees the whole pyramid); ``mpp`` is
    the slide's own microns per pixel for files whose header has none (``force_mpp``: replace
    the header's). Selection: ``target_mpp`` is the working resolution and
    ``tissue_threshold`` the tissue fraction a region needs to be analysed (``None``: the
    model's). Compute: ``device`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``), ``batch_size``
    regions per forward pass (``None``: :data:`BATCH_PIXELS` worth of the model's regions, see
    :meth:`regions_per_batch`), ``workers`` reader threads, ``amp`` mixed precision on CUDA.
    Segmentation outputs: ``labels`` (argmax heatmap instead of probabilities), ``threshold``
    (probability above which a token joins a class polygon), ``preview_size`` (px).
    """

    backend: str = "auto"
    mpp: float | None = None
    force_mpp: bool = False
    target_mpp: float | None = None
    tissue_threshold: float | None = None
    device: str = "auto"
    batch_size: int | None = None
    workers: int = 2
    amp: bool = True
    labels: bool = False
    threshold: float = 0.5
    preview_size: int = 1024

    def __post_init__(self) -> None:
        if self.backend not in BACKEND_CHOICES:
            raise OptionError(f"backend must be one of {', '.join(BACKEND_CHOICES)}, got {self.backend!r}")
        for name in ("mpp", "target_mpp"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise OptionError(f"{name} must be a positive number of microns per pixel, got {value!r}")
        if self.tissue_threshold is not None and not 0.0 <= self.tissue_threshold <= 1.0:
            raise OptionError(f"tissue_threshold must be a fraction between 0 and 1, got {self.tissue_threshold}")
        if not 0.0 <= self.threshold < 1.0:
            raise OptionError(f"threshold must be in [0, 1), got {self.threshold}")
        for name in ("batch_size", "preview_size"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise OptionError(f"{name} must be at least 1, got {getattr(self, name)}")
        if int(self.workers) < 0:
            raise OptionError(f"workers must be 0 or more, got {self.workers}")
        device = str(self.device)
        if device not in DEVICE_CHOICES and not device.startswith("cuda:"):
            raise OptionError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, settings: "RunSettings | None" = None, **overrides: Any) -> "RunSettings":
        """``settings`` (default: all defaults) with ``overrides`` applied; unknown names are an error.

        Lets a lab script write ``classify_slide(path, mpp=0.25)`` and the engine still handle
        one object.
        """
        base = settings if settings is not None else cls()
        if not isinstance(base, RunSettings):
            raise TypeError(f"settings must be a RunSettings, not {type(base).__name__}")
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unknown run settings: {', '.join(unknown)}")
        return dataclasses.replace(base, **overrides) if overrides else base

    def replace(self, **changes: Any) -> "RunSettings":
        """A copy with ``changes`` (validated like the original)."""
        return dataclasses.replace(self, **changes)

    def for_slide(self, mpp: float | None) -> "RunSettings":
        """These settings for one slide whose manifest row gives its own pixel size (or None)."""
        return self if mpp is None else dataclasses.replace(self, mpp=mpp)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ against a model
    def working_mpp(self, model_target_mpp: float | None) -> float | None:
        """The resolution regions are read at: this run's ``target_mpp``, else the model's."""
        return self.target_mpp if self.target_mpp is not None else model_target_mpp

    def regions_per_batch(self, region_size: int) -> int:
        """Regions per forward pass: ``batch_size``, else :data:`BATCH_PIXELS` worth of ``region_size`` px regions."""
        if self.batch_size is not None:
            return int(self.batch_size)
        return max(1, round(BATCH_PIXELS / float(region_size) ** 2))

    def region_threshold(self, model_threshold: float) -> float:
        """The tissue fraction a region needs: this run's, else the model's."""
        return self.tissue_threshold if self.tissue_threshold is not None else model_threshold
