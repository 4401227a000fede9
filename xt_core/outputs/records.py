"""The JSON record of one slide, the names of a slide's output files, and the batch summary CSV.

A slide ``<name>`` (its file name without the extension; ``.ome.tif(f)`` counts as one)
gives, in the output folder:

* ``<name>.json``: the record (:func:`slide_record`), written last;
* with segmentation: ``<name>.heatmap.ome.tif``, ``<name>.preview.png``, ``<name>.geojson``.

The record's ``outputs`` names these files relative to the folder holding the JSON, so an
output folder can be moved or compared with another.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from xt_core.outputs.atomic import atomic_path
from xt_core.slide.slide import file_stem

JSON_SUFFIX = ".json"
SEGMENT_SUFFIXES = {"heatmap": ".heatmap.ome.tif", "preview": ".preview.png", "geojson": ".geojson"}
SUMMARY_NAME = "summary.csv"
#: Fixed columns of the summary CSV; one ``p_<class>`` column per class goes after ``prediction``.
SUMMARY_HEAD = ["slide", "status", "prediction"]
SUMMARY_TAIL = ["seconds", "error"]


def slide_stem(path: str | os.PathLike) -> str:
    """The output name of a slide: its file name without the extension (as ``Slide.name``)."""
    return file_stem(path)


def output_names(stem: str, segment: bool) -> dict[str, str]:
    """``{"json": "<stem>.json", ...}``: the files one slide writes (relative to the output folder)."""
    names = {"json": stem + JSON_SUFFIX}
    if segment:
        names.update({key: stem + suffix for key, suffix in SEGMENT_SUFFIXES.items()})
    return names


def model_info(model: Any) -> dict[str, Any]:
    """``{"name", "sha256", "path"}`` of a model (sha256 of its weights file; None in memory)."""
    return {
        "name": model.config.name,
        "sha256": getattr(model, "weights_sha256", None),
        "path": getattr(model, "checkpoint_path", None),
    }


def slide_record(result: Any, model: Any, *, slide: Any = None, outputs: dict[str, str] | None = None,
                 extra_timing: dict[str, float] | None = None) -> dict[str, Any]:
    """The JSON record of one slide: ``SlideResult.record()`` plus the model and the outputs.

    Keys: ``slide``, ``model`` {name, sha256, path}, ``classes``, ``probabilities`` (class ->
    probability), ``prediction``, ``mpp``, ``mpp_source``, ``target_mpp``, ``slide_dimensions``
    (level-0 width, height), ``grid`` {rows, cols, region_size, region_size_px, token_size_px,
    heatmap_shape}, ``regions`` {total, tissue}, ``tissue_fraction``, ``timing`` (seconds per
    stage), ``xt_slide_version``, ``outputs``.
    """
    base = result.record()
    record: dict[str, Any] = {"slide": base.pop("slide"), "model": model_info(model)}
    timing = base.pop("timing")
    version = base.pop("xt_slide_version")
    record.update(base)
    if slide is not None:
        record["mpp_source"] = slide.mpp_source
        record["slide_dimensions"] = list(slide.dimensions)
        record["backend"] = slide.backend
    timing.update({k: round(v, 4) for k, v in (extra_timing or {}).items()})
    record["timing"] = timing
    record["xt_slide_version"] = version
    record["outputs"] = dict(outputs or {})
    return record


def summary_fields(classes: Sequence[str]) -> list[str]:
    return SUMMARY_HEAD + [f"p_{c}" for c in classes] + SUMMARY_TAIL


def summary_row(slide: str, status: str, record: dict[str, Any] | None = None, *, seconds: float | None = None,
                error: str = "") -> dict[str, Any]:
    """One row of the summary (a dict keyed like :func:`summary_fields`, probabilities under ``p_``)."""
    row: dict[str, Any] = {"slide": slide, "status": status, "prediction": "", "seconds": "", "error": error}
    if record is not None:
        row["prediction"] = record.get("prediction") or ""
        for name, p in (record.get("probabilities") or {}).items():
            row[f"p_{name}"] = f"{p:.6f}"
    if seconds is not None:
        row["seconds"] = f"{seconds:.2f}"
    return row


def write_summary_csv(path: str | os.PathLike, rows: Iterable[dict[str, Any]], classes: Sequence[str]) -> Path:
    """Write the summary CSV atomically (so a killed batch always leaves a readable one)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=summary_fields(classes), extrasaction="ignore", restval="",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    return Path(path)


def read_summary_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a summary CSV as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
