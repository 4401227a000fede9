"""Many slides, one model load: inputs, resume, error isolation, and the summary CSV.

.. code-block:: python

    import xt_core
    from xt_core import RunSettings

    summary = xt_core.run_batch("slides/manifest.csv", "results", model="models/lung",
                                segment=True, resume=True, settings=RunSettings(mpp=0.25))

Inputs are manifests, folders, globs and slide paths, in any mix (:func:`collect_inputs`); a
manifest is the same CSV training reads (:mod:`xt_core.manifest`: a ``slide`` column, an
optional per-slide ``mpp``).

Every output is written under a temporary name and renamed, the slide's JSON last, so a slide
counts as done exactly when its JSON exists (and, with segmentation, its other files too).
``resume=True`` skips those, and a resumed batch ends with the same files as an uninterrupted
one. The summary CSV is rewritten (atomically) after every slide, so a killed batch still has a
valid one. A slide that fails is a ``failed`` row with its reason and the batch goes on. Ctrl-C
marks the unfinished slides ``interrupted``, writes the summary and raises
:class:`BatchInterrupted` (a :class:`KeyboardInterrupt` that carries the summary).

This module runs the slides one after another in this process; ``run_batch(...,
scheduler=...)`` hands them to Dask workers instead (:mod:`xt_core.batch_dask`), reusing the
plan (:func:`plan_batch`), the per-slide function and the summary writer (:func:`record_outcome`).
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from xt_core.api import (
    analyse_slide,
    check_segmentation,
    remove_stale_temporaries,
    resolve_model,
)
from xt_core.errors import PathError, XTError
from xt_core.manifest import read_manifest
from xt_core.outputs.records import (
    SUMMARY_NAME,
    output_names,
    slide_stem,
    summary_row,
    write_summary_csv,
)
from xt_core.progress import RegionProgress
from xt_core.settings import OptionError, RunSettings

if TYPE_CHECKING:
    from xt_core.models.xt import XTModel

__all__ = ["BatchInterrupted", "BatchItem", "BatchSummary", "SLIDE_SUFFIXES", "collect_inputs", "error_reason",
           "run_batch"]

#: File types a folder given to a batch is searched for (our own outputs are left out).
SLIDE_SUFFIXES = (".svs", ".ndpi", ".tif", ".tiff", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide",
                  ".png", ".jpg", ".jpeg")
_OWN_OUTPUTS = (".heatmap.ome.tif", ".preview.png", ".tissue.png")

#: ``on_slide(row, record, error)``: called after each slide (the CLI prints with it).
SlideCallback = Callable[[dict[str, Any], "dict[str, Any] | None", "BaseException | None"], None]


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


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a batch; ``summary`` is the batch as written (``summary.interrupted`` is True)."""

    def __init__(self, summary: BatchSummary) -> None:
        super().__init__(f"batch interrupted: {summary.done} of {len(summary.rows)} slides done")
        self.summary = summary


# ----------------------------------------------------------------------------- inputs
def collect_inputs(inputs: "str | os.PathLike | Sequence[str | os.PathLike]") -> list[BatchItem]:
    """The slides of a batch from paths, folders, globs and manifest CSVs (any mix).

    A manifest (``.csv``) is read by :func:`xt_core.manifest.read_manifest` (its slides need
    not exist yet: a missing one fails as a slide, not the batch). A folder gives its slide
    files (not recursive, hidden files and napari-xt's own outputs left out), a glob its
    matches, both sorted by name. A plain path is kept even if it does not exist.
    """
    entries = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    items: list[BatchItem] = []
    for entry in entries:
        text = os.fspath(entry)
        path = Path(text)
        if path.suffix.lower() == ".csv" and path.is_file():
            items.extend(BatchItem(str(row.slide), row.mpp) for row in read_manifest(path, check_files=False))
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


def _is_slide_file(p: Path) -> bool:
    name = p.name.lower()
    return (p.is_file() and not name.startswith(".") and name.endswith(SLIDE_SUFFIXES)
            and not name.endswith(_OWN_OUTPUTS))


# ----------------------------------------------------------------------------- the plan
@dataclass
class BatchPlan:
    """A batch before it runs: the items, what is already done, which outputs would clash.

    Shared by the in-process runner and the Dask runner, so both skip, refuse and record
    exactly the same slides.
    """

    summary: BatchSummary
    clash: dict[int, str]

    def todo(self) -> list[int]:
        return [i for i, row in enumerate(self.summary.rows) if row["status"] != "done"]


def plan_batch(items: list[BatchItem], out: Path, classes: list[str], *, segment: bool, resume: bool,
               weights_sha256: str | None) -> BatchPlan:
    """Resume what is complete, refuse slides whose outputs would overwrite another's, write the summary."""
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / SUMMARY_NAME
    # temporaries a killed run left behind (a slide still to do also cleans its own on the way)
    remove_stale_temporaries(out, [SUMMARY_NAME] + [name for item in items
                                                    for name in output_names(slide_stem(item.path), True).values()])
    summary = BatchSummary(out_dir=out, summary_path=summary_path, classes=classes, items=items,
                           rows=[summary_row(it.path, "pending") for it in items], records=[None] * len(items))
    owners: dict[str, int] = {}
    clash: dict[int, str] = {}
    for i, item in enumerate(items):
        stem = slide_stem(item.path)
        if stem in owners:
            clash[i] = f"its outputs ({stem}.*) would overwrite those of {items[owners[stem]].path}; rename one of them"
            continue
        owners[stem] = i
        if resume:
            record = complete_record(out, output_names(stem, segment), weights_sha256)
            if record is not None:
                summary.records[i] = record
                summary.rows[i] = summary_row(item.path, "done", record, seconds=record.get("timing", {}).get("wall"))
                summary.resumed += 1
    write_summary_csv(summary_path, summary.rows, classes)
    return BatchPlan(summary, clash)


def record_outcome(summary: BatchSummary, i: int, record: dict[str, Any] | None, error: BaseException | None,
                   seconds: float | None) -> None:
    """Put one slide's outcome into the summary and rewrite the CSV (``seconds`` None: not known)."""
    item = summary.items[i]
    if error is None:
        summary.records[i] = record
        summary.rows[i] = summary_row(item.path, "done", record, seconds=seconds)
    else:
        summary.rows[i] = summary_row(item.path, "failed", seconds=seconds, error=error_reason(error, item.path))
    write_summary_csv(summary.summary_path, summary.rows, summary.classes)


def mark_interrupted(summary: BatchSummary, running: Sequence[int] = ()) -> None:
    """Unfinished slides (pending, or running now) become ``interrupted``; the CSV is rewritten."""
    summary.interrupted = True
    for i, row in enumerate(summary.rows):
        if row["status"] == "pending" or i in running:
            summary.rows[i] = summary_row(summary.items[i].path, "interrupted")
    write_summary_csv(summary.summary_path, summary.rows, summary.classes)


# ----------------------------------------------------------------------------- running
def run_batch(
    inputs: "str | os.PathLike | Sequence[str | os.PathLike]",
    out_dir: str | os.PathLike,
    *,
    model: "XTModel | str | os.PathLike | None" = None,
    segment: bool = False,
    resume: bool = False,
    settings: RunSettings | None = None,
    progress: bool = True,
    on_slide: SlideCallback | None = None,
    scheduler: str | None = None,
    jobs: int | None = None,
    **overrides: Any,
) -> BatchSummary:
    """Classify (and with ``segment`` segment) many slides into ``out_dir``; returns the summary.

    ``inputs``: a list of paths, a folder, a glob, or a manifest CSV (see :func:`collect_inputs`).
    ``settings`` (or keyword ``overrides`` of its fields) applies to every slide; a manifest's
    ``mpp`` overrides ``mpp`` for its slide. Writes ``<out_dir>/summary.csv`` (slide, status,
    prediction, ``p_<class>`` per class, seconds, error) after every slide. ``progress`` shows
    a bar on stderr (slides done of all, ETA, and the current slide's regions).
    ``on_slide(row, record, error)`` is called after each slide. Ctrl-C: the summary is
    written with the unfinished slides ``interrupted`` and :class:`BatchInterrupted` is raised.

    ``scheduler`` runs the slides on Dask distributed instead of in this process, with the same
    outputs and summary: ``"local"`` starts ``jobs`` worker processes here, an address
    (``"tcp://host:port"``) uses a running scheduler and its workers (see
    :mod:`xt_core.batch_dask`; needs ``pip install 'napari-xt[dask]'``).
    """
    from tqdm import tqdm

    from xt_core.inference import resolve_device

    settings = RunSettings.build(settings, **overrides)
    if scheduler is not None:
        from xt_core.batch_dask import run_dask_batch  # distributed is imported there, only when asked for

        return run_dask_batch(inputs, out_dir, scheduler=scheduler, jobs=jobs, model=model, segment=segment,
                              resume=resume, settings=settings, progress=progress, on_slide=on_slide)
    if jobs is not None:
        raise OptionError("jobs is the number of Dask workers: give it with scheduler='local'")
    items = collect_inputs(inputs)
    model = resolve_model(model)  # once for the whole batch
    resolve_device(settings.device)
    if segment:
        check_segmentation(model)
    out = Path(out_dir)
    plan = plan_batch(items, out, list(model.config.classes), segment=segment, resume=resume,
                      weights_sha256=getattr(model, "weights_sha256", None))
    summary = plan.summary

    bar = tqdm(total=len(items), initial=summary.resumed, unit="slide", desc="slides", file=sys.stderr,
               disable=not progress, dynamic_ncols=True, leave=True)
    regions = RegionProgress("regions", enabled=progress, terminal_only=False, position=1)
    current: int | None = None
    try:
        for i in plan.todo():
            item = items[i]
            current = i
            bar.set_postfix_str(Path(item.path).name, refresh=True)
            t0 = time.perf_counter()
            error: BaseException | None = None
            record = None
            if i in plan.clash:
                error = PathError(item.path, plan.clash[i])
            else:
                try:
                    record = analyse_slide(item.path, model, settings.for_slide(item.mpp), segment=segment,
                                           out_dir=out, progress=regions.update)
                except Exception as exc:  # a bad slide is a row of the summary, not the end of the batch
                    error = exc
                finally:
                    regions.close()
            record_outcome(summary, i, record, error, time.perf_counter() - t0)
            current = None
            bar.update(1)
            if on_slide is not None:
                on_slide(summary.rows[i], record, error)
    except KeyboardInterrupt:
        regions.close()
        mark_interrupted(summary, [current] if current is not None else [])
        raise BatchInterrupted(summary) from None
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


def complete_record(out_dir: Path, names: dict[str, str], sha256: str | None) -> dict[str, Any] | None:
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
