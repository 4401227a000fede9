"""The work of ``xt-slide classify / segment / batch`` as functions for lab scripts.

.. code-block:: python

    import xt_core

    record = xt_core.classify_slide("slide.svs", model="models/lung")        # a dict
    record = xt_core.segment_slide("slide.svs", model="models/lung", out_dir="out")
    summary = xt_core.run_batch("slides/", "out", model="models/lung", segment=True, resume=True)

Each returns the records the CLI writes (see :func:`xt_core.outputs.records.slide_record`).
``model`` is a checkpoint folder (or its ``model.safetensors``), an :class:`XTModel` already
loaded, or None for the bundled default model. A batch loads its model once.

Batch semantics: every output is written under a temporary name and renamed, the slide's JSON
last, so a slide counts as done exactly when its JSON exists (and, with segmentation, its other
files too). ``resume=True`` skips those, and a resumed batch ends with the same files as an
uninterrupted one. The summary CSV is rewritten (atomically) after every slide, so a killed
batch still has a valid one. A slide that fails is a ``failed`` row with its reason and the
batch goes on; Ctrl-C marks the unfinished slides ``interrupted``, writes the summary and
re-raises :class:`KeyboardInterrupt`.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import glob
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from xt_core.errors import ModelFileError, PathError, XTError
from xt_core.outputs.records import (
    SUMMARY_NAME,
    output_names,
    slide_record,
    slide_stem,
    summary_row,
    write_summary_csv,
)

if TYPE_CHECKING:
    from xt_core.models.xt import XTModel

__all__ = [
    "BatchItem",
    "BatchSummary",
    "OptionError",
    "classify_slide",
    "collect_inputs",
    "load_default_model",
    "resolve_model",
    "run_batch",
    "segment_slide",
]

NO_DEFAULT_MODEL = "no bundled default model in this install; pass --model PATH (a checkpoint folder)"
#: File types a folder given to a batch is searched for (our own outputs are left out).
SLIDE_SUFFIXES = (".svs", ".ndpi", ".tif", ".tiff", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide",
                  ".png", ".jpg", ".jpeg")
_OWN_OUTPUTS = (".heatmap.ome.tif", ".preview.png", ".tissue.png")


class OptionError(XTError):
    """An option that cannot work here (e.g. ``--device cuda`` without a GPU)."""


# ----------------------------------------------------------------------------- models
def resolve_model(model: "XTModel | str | os.PathLike | None" = None) -> "XTModel":
    """An :class:`XTModel` from a model object, a checkpoint path, or None (the bundled default).

    The default comes from ``xt_core.models.default.default_model_path()`` where this install
    has one; otherwise a :class:`ModelFileError` says to pass ``--model``.
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
        raise ModelFileError("default model", NO_DEFAULT_MODEL) from None
    finder = getattr(default_module, "default_model_path", None)
    if finder is None:
        raise ModelFileError("default model", NO_DEFAULT_MODEL)
    path = finder()
    if path is None:
        raise ModelFileError("default model", NO_DEFAULT_MODEL)
    return path


def _model_view(model: "XTModel", target_mpp: float | None) -> "XTModel":
    """``model`` working at ``target_mpp``: a shallow copy sharing the weights, its config replaced."""
    if target_mpp is None or target_mpp == model.config.target_mpp:
        return model
    if not (math.isfinite(target_mpp) and target_mpp > 0):
        raise OptionError(f"--target-mpp: must be a positive number of microns per pixel, got {target_mpp}")
    view = copy.copy(model)  # shares every submodule and parameter; own __dict__
    view.config = dataclasses.replace(model.config, target_mpp=float(target_mpp))
    return view


def check_device(device: str) -> None:
    """Raise :class:`OptionError` for a device this torch cannot use."""
    from xt_core.inference import resolve_device

    try:
        resolve_device(device)
    except (ValueError, RuntimeError) as exc:
        raise OptionError(str(exc)) from None


# ----------------------------------------------------------------------------- one slide
@dataclass
class _Settings:
    mpp: float | None = None
    force_mpp: bool = False
    target_mpp: float | None = None
    device: str = "auto"
    batch_size: int = 8
    workers: int = 2
    tissue_threshold: float | None = None
    backend: str = "auto"
    labels: bool = False
    threshold: float = 0.5
    preview_size: int = 1024


def classify_slide(
    path: str | os.PathLike,
    model: "XTModel | str | os.PathLike | None" = None,
    *,
    out_dir: str | os.PathLike | None = None,
    mpp: float | None = None,
    force_mpp: bool = False,
    target_mpp: float | None = None,
    device: str = "auto",
    batch_size: int = 8,
    workers: int = 2,
    tissue_threshold: float | None = None,
    backend: str = "auto",
) -> dict[str, Any]:
    """Classify one slide; returns its record and, with ``out_dir``, writes ``<out_dir>/<name>.json``.

    ``mpp`` is the slide's microns per pixel for files that carry none (with ``force_mpp`` it
    replaces the header's); ``target_mpp`` overrides the model's working resolution;
    ``tissue_threshold`` (default: the model's) is the tissue fraction a region needs to be
    analysed.
    """
    settings = _Settings(mpp=mpp, force_mpp=force_mpp, target_mpp=target_mpp, device=device,
                         batch_size=batch_size, workers=workers, tissue_threshold=tissue_threshold, backend=backend)
    check_device(device)
    return _analyse(path, resolve_model(model), settings, segment=False,
                    out_dir=Path(out_dir) if out_dir is not None else None)


def segment_slide(
    path: str | os.PathLike,
    model: "XTModel | str | os.PathLike | None" = None,
    *,
    out_dir: str | os.PathLike = ".",
    labels: bool = False,
    threshold: float = 0.5,
    preview_size: int = 1024,
    mpp: float | None = None,
    force_mpp: bool = False,
    target_mpp: float | None = None,
    device: str = "auto",
    batch_size: int = 8,
    workers: int = 2,
    tissue_threshold: float | None = None,
    backend: str = "auto",
) -> dict[str, Any]:
    """Classify and segment one slide, writing into ``out_dir``: ``<name>.heatmap.ome.tif``
    (per-class probabilities, or argmax ``labels``), ``<name>.preview.png``, ``<name>.geojson``
    (polygons where a class's probability > ``threshold``) and, last, ``<name>.json``.

    Returns the record (as written to the JSON). Other arguments as :func:`classify_slide`.
    """
    _check_threshold(threshold)
    settings = _Settings(mpp=mpp, force_mpp=force_mpp, target_mpp=target_mpp, device=device,
                         batch_size=batch_size, workers=workers, tissue_threshold=tissue_threshold,
                         backend=backend, labels=labels, threshold=threshold, preview_size=preview_size)
    check_device(device)
    model = resolve_model(model)
    _check_segmentation(model)
    return _analyse(path, model, settings, segment=True, out_dir=Path(out_dir))


def _check_threshold(threshold: float) -> None:
    if not (0.0 <= threshold < 1.0):
        raise OptionError(f"--threshold: must be in [0, 1), got {threshold}")


def _check_segmentation(model: "XTModel") -> None:
    if not model.config.segmentation:
        where = getattr(model, "checkpoint_path", None) or model.config.name
        raise ModelFileError(where, "this model has no segmentation head; it can classify, not segment")


def _analyse(path: str | os.PathLike, model: "XTModel", s: _Settings, *, segment: bool,
             out_dir: Path | None) -> dict[str, Any]:
    """Open, predict, write the outputs (the JSON last); return the record."""
    from xt_core.inference import predict_slide
    from xt_core.outputs.atomic import write_json
    from xt_core.slide import open_slide

    t_start = time.perf_counter()
    names = output_names(slide_stem(path), segment)
    view = _model_view(model, s.target_mpp)
    if out_dir is not None:
        _remove_stale_temporaries(out_dir, names.values())
    with open_slide(path, backend=s.backend, mpp=s.mpp, force_mpp=s.force_mpp) as slide:
        t_open = time.perf_counter() - t_start
        result = predict_slide(view, slide, batch_size=s.batch_size, workers=s.workers, device=s.device,
                               tissue_threshold=s.tissue_threshold)
        t0 = time.perf_counter()
        if segment:
            assert out_dir is not None
            _write_segmentation(slide, result, names, out_dir, s)
        t_outputs = time.perf_counter() - t0
        wall = time.perf_counter() - t_start
        record = slide_record(result, model, slide=slide, outputs=names if out_dir is not None else None,
                              extra_timing={"open": t_open, "outputs": t_outputs, "wall": wall})
    if out_dir is not None:
        write_json(out_dir / names["json"], record)
    return record


def _write_segmentation(slide, result, names: dict[str, str], out_dir: Path, s: _Settings) -> None:
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


def _remove_stale_temporaries(out_dir: Path, names: Iterable[str]) -> None:
    """Delete temporaries a killed run left for these outputs (``.<name>.<random><suffix>``)."""
    if not out_dir.is_dir():
        return
    for name in names:
        for stale in out_dir.glob(f".{glob.escape(name)}.*"):
            try:
                stale.unlink()
            except OSError:
                pass


# ----------------------------------------------------------------------------- batches
@dataclass(frozen=True)
class BatchItem:
    """One slide of a batch: its path and, from a manifest, its own pixel size."""

    path: str
    mpp: float | None = None


@dataclass
class BatchSummary:
    """What a batch did. ``rows`` are the summary CSV's rows; ``records`` the slides' records
    (None where a slide failed or was not reached), in input order."""

    out_dir: Path
    summary_path: Path
    classes: list[str]
    items: list[BatchItem]
    rows: list[dict[str, Any]]
    records: list[dict[str, Any] | None]
    resumed: int = 0
    interrupted: bool = False

    def count(self, status: str) -> int:
        return sum(1 for row in self.rows if row["status"] == status)

    @property
    def done(self) -> int:
        return self.count("done")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def exit_code(self) -> int:
        """0 all done; 1 some slides failed; 130 interrupted."""
        if self.interrupted:
            return 130
        return 1 if self.failed else 0


def collect_inputs(inputs: "str | os.PathLike | Sequence[str | os.PathLike]") -> list[BatchItem]:
    """The slides of a batch from paths, folders, globs and manifest CSVs (any mix).

    A manifest (``.csv``) has a ``slide`` (or ``path``) column and optionally ``mpp``; its
    relative paths are taken from the manifest's folder. A folder gives its slide files (not
    recursive, hidden files and napari-xt's own outputs left out), a glob its matches, both
    sorted by name. A plain path is kept even if it does not exist (it then fails as a slide).
    """
    entries = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    items: list[BatchItem] = []
    for entry in entries:
        text = os.fspath(entry)
        path = Path(text)
        if path.suffix.lower() == ".csv" and path.is_file():
            items.extend(read_manifest(path))
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if _is_slide_file(p))
            if not found:
                raise PathError(path, "no slide files in this folder")
            items.extend(BatchItem(str(p)) for p in found)
        elif glob.has_magic(text):
            matches = sorted(glob.glob(text))
            if not matches:
                raise PathError(text, "no files match this pattern")
            items.extend(BatchItem(m) for m in matches if not Path(m).is_dir())
        else:
            items.append(BatchItem(text))
    if not items:
        raise OptionError("no slides to process")
    return items


def read_manifest(path: str | os.PathLike) -> list[BatchItem]:
    """The slides listed in a manifest CSV (columns ``slide`` or ``path``, optional ``mpp``)."""
    manifest = Path(path)
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = {(name or "").strip().lower(): name for name in (reader.fieldnames or [])}
            column = fields.get("slide") or fields.get("path")
            if column is None:
                raise PathError(manifest, f"a manifest needs a 'slide' (or 'path') column; found: "
                                          f"{', '.join(reader.fieldnames or []) or 'nothing'}")
            mpp_column = fields.get("mpp")
            items = []
            for line, row in enumerate(reader, start=2):
                slide = (row.get(column) or "").strip()
                if not slide:
                    continue
                mpp = None
                text = (row.get(mpp_column) or "").strip() if mpp_column else ""
                if text:
                    try:
                        mpp = float(text)
                    except ValueError:
                        mpp = float("nan")
                    if not (math.isfinite(mpp) and mpp > 0):
                        raise PathError(manifest, f"line {line}: mpp {text!r} is not a positive number")
                p = Path(slide).expanduser()
                if not p.is_absolute():
                    p = manifest.parent / p
                items.append(BatchItem(str(p), mpp))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PathError(manifest, f"cannot read the manifest: {exc}") from exc
    if not items:
        raise PathError(manifest, "the manifest lists no slides")
    return items


def _is_slide_file(p: Path) -> bool:
    name = p.name.lower()
    return (p.is_file() and not name.startswith(".") and name.endswith(SLIDE_SUFFIXES)
            and not name.endswith(_OWN_OUTPUTS))


def run_batch(
    inputs: "str | os.PathLike | Sequence[str | os.PathLike]",
    out_dir: str | os.PathLike,
    *,
    model: "XTModel | str | os.PathLike | None" = None,
    segment: bool = False,
    resume: bool = False,
    progress: bool = True,
    labels: bool = False,
    threshold: float = 0.5,
    preview_size: int = 1024,
    mpp: float | None = None,
    force_mpp: bool = False,
    target_mpp: float | None = None,
    device: str = "auto",
    batch_size: int = 8,
    workers: int = 2,
    tissue_threshold: float | None = None,
    backend: str = "auto",
    on_slide: Callable[[dict[str, Any], dict[str, Any] | None, BaseException | None], None] | None = None,
) -> BatchSummary:
    """Classify (and with ``segment`` segment) many slides into ``out_dir``; returns the summary.

    ``inputs``: a list of paths, a folder, a glob, or a manifest CSV (see :func:`collect_inputs`).
    A manifest's ``mpp`` overrides ``mpp`` for its slide. Writes ``<out_dir>/summary.csv``
    (slide, status, prediction, ``p_<class>`` per class, seconds, error) after every slide.
    ``progress`` shows a bar on stderr (slides done of all, ETA). ``on_slide(row, record, error)``
    is called after each slide (the CLI prints with it). Ctrl-C: the summary is written with the
    unfinished slides ``interrupted`` and :class:`KeyboardInterrupt` is raised again.
    """
    from tqdm import tqdm

    if segment:
        _check_threshold(threshold)
    items = collect_inputs(inputs)
    model = resolve_model(model)  # once for the whole batch
    check_device(device)
    if segment:
        _check_segmentation(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = list(model.config.classes)
    summary_path = out / SUMMARY_NAME
    # temporaries a killed run left behind (a slide still to do also cleans its own on the way)
    _remove_stale_temporaries(out, [SUMMARY_NAME] + [name for item in items
                                                     for name in output_names(slide_stem(item.path), True).values()])

    base = _Settings(mpp=mpp, force_mpp=force_mpp, target_mpp=target_mpp, device=device, batch_size=batch_size,
                     workers=workers, tissue_threshold=tissue_threshold, backend=backend, labels=labels,
                     threshold=threshold, preview_size=preview_size)
    summary = BatchSummary(out_dir=out, summary_path=summary_path, classes=classes, items=items,
                           rows=[summary_row(it.path, "pending") for it in items], records=[None] * len(items))

    # Which slides are already complete (resume), and which would overwrite another's outputs.
    owners: dict[str, int] = {}
    clash: dict[int, str] = {}
    sha = getattr(model, "weights_sha256", None)
    for i, item in enumerate(items):
        stem = slide_stem(item.path)
        if stem in owners:
            clash[i] = f"its outputs ({stem}.*) would overwrite those of {items[owners[stem]].path}; rename one of them"
            continue
        owners[stem] = i
        if resume:
            record = _complete_record(out, output_names(stem, segment), sha)
            if record is not None:
                summary.records[i] = record
                summary.rows[i] = summary_row(item.path, "done", record, seconds=record.get("timing", {}).get("wall"))
                summary.resumed += 1
    write_summary_csv(summary_path, summary.rows, classes)

    bar = tqdm(total=len(items), initial=summary.resumed, unit="slide", desc="slides", file=sys.stderr,
               disable=not progress, dynamic_ncols=True, leave=True)
    current = None
    try:
        for i, item in enumerate(items):
            if summary.rows[i]["status"] == "done":
                continue
            current = i
            bar.set_postfix_str(Path(item.path).name, refresh=True)
            t0 = time.perf_counter()
            error: BaseException | None = None
            record = None
            if i in clash:
                error = PathError(item.path, clash[i])
            else:
                settings = dataclasses.replace(base, mpp=item.mpp if item.mpp is not None else base.mpp)
                try:
                    record = _analyse(item.path, model, settings, segment=segment, out_dir=out)
                except Exception as exc:  # a bad slide is a row of the summary, not the end of the batch
                    error = exc
            seconds = time.perf_counter() - t0
            if error is None:
                summary.records[i] = record
                summary.rows[i] = summary_row(item.path, "done", record, seconds=seconds)
            else:
                summary.rows[i] = summary_row(item.path, "failed", seconds=seconds,
                                              error=error_reason(error, item.path))
            current = None
            write_summary_csv(summary_path, summary.rows, classes)
            bar.update(1)
            if on_slide is not None:
                on_slide(summary.rows[i], record, error)
    except KeyboardInterrupt:
        summary.interrupted = True
        for i, row in enumerate(summary.rows):
            if row["status"] == "pending" or i == current:
                summary.rows[i] = summary_row(items[i].path, "interrupted")
        write_summary_csv(summary_path, summary.rows, classes)
        raise
    finally:
        bar.close()
    return summary


def error_reason(error: BaseException, slide: str) -> str:
    """One line for the summary's error column (the path is left out when it is the slide's)."""
    if isinstance(error, PathError) and os.fspath(error.path) == os.fspath(slide):
        reason = error.reason
    elif isinstance(error, XTError):
        reason = str(error)
    else:
        reason = f"internal error ({type(error).__name__}): {error}"
    return " ".join(reason.split())


def _complete_record(out_dir: Path, names: dict[str, str], sha256: str | None) -> dict[str, Any] | None:
    """The record of a slide whose outputs are all there (made by this model), else None."""
    try:
        record = json.loads((out_dir / names["json"]).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if any(not (out_dir / name).is_file() for key, name in names.items() if key != "json"):
        return None
    if sha256 is not None and (record.get("model") or {}).get("sha256") != sha256:
        return None
    return record
