"""The manifest: a CSV file listing slides, read the same way by batches and by training.

One format with optional columns (header row required, names case-insensitive, order free,
other columns ignored); a batch reads ``slide`` and ``mpp``, training all of them:

``slide``       path of the slide (required; ``path`` is accepted as its name too). Relative
                paths resolve against the manifest's folder, so a manifest and its slides can
                move together.
``label``       the slide's class name (optional; needed for the classification loss).
``annotation``  a GeoJSON file of polygons or a mask image of class indices (optional; the
                segmentation target, see :mod:`xt_core.train.annotations`).
``split``       ``train``, ``val`` (also ``valid``/``validation``) or ``test``, or any other
                word (optional; rows without one are ``train``).
``mpp``         microns per pixel, used for slides whose header has none (optional).

Every error names the manifest and the row (``"manifest.csv: row 7: ..."``; rows are counted
as lines of the file, the header being row 1).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from xt_core._paths import read_user_text, resolve_path
from xt_core.errors import PathError

__all__ = ["Manifest", "ManifestError", "ManifestRow", "read_manifest"]

_SPLIT_ALIASES = {"valid": "val", "validation": "val", "dev": "val", "training": "train", "testing": "test"}
_COLUMNS = ("slide", "label", "annotation", "split", "mpp")


class ManifestError(PathError):
    """A manifest that cannot be used: missing, malformed, or naming files that do not exist."""


@dataclass(frozen=True)
class ManifestRow:
    """One slide of the manifest."""

    slide: Path
    label: str | None = None
    annotation: Path | None = None
    split: str = "train"
    mpp: float | None = None
    line: int = 0  # the row's line in the file (header = 1); 0 when built in code

    def to_dict(self) -> dict:
        return {
            "slide": str(self.slide),
            "label": self.label,
            "annotation": str(self.annotation) if self.annotation else None,
            "split": self.split,
            "mpp": self.mpp,
        }


@dataclass
class Manifest:
    """The rows of a manifest file, in file order."""

    path: Path
    rows: list[ManifestRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def split(self, *names: str | None) -> list[ManifestRow]:
        """Rows whose split is one of ``names`` (``None``: all rows)."""
        if not names or names == (None,):
            return list(self.rows)
        wanted = {normalize_split(n) for n in names if n is not None}
        return [r for r in self.rows if r.split in wanted]

    @property
    def splits(self) -> list[str]:
        return sorted({r.split for r in self.rows})

    @property
    def labels(self) -> list[str]:
        """The distinct labels, sorted (the class list of a model trained from scratch)."""
        return sorted({r.label for r in self.rows if r.label is not None})

    def check_labels(self, classes: Sequence[str]) -> None:
        """Raise :class:`ManifestError` for a row whose label is not one of ``classes``."""
        known = set(classes)
        for r in self.rows:
            if r.label is not None and r.label not in known:
                raise ManifestError(
                    self.path, f"row {r.line}: label {r.label!r} is not a class of the model ({', '.join(classes)})"
                )


def normalize_split(name: str) -> str:
    name = name.strip().lower()
    return _SPLIT_ALIASES.get(name, name)


def read_manifest(
    path: str | os.PathLike,
    *,
    check_files: bool = True,
    classes: Sequence[str] | None = None,
) -> Manifest:
    """Read and check a manifest CSV; see the module docstring for its columns.

    ``check_files`` makes a missing slide or annotation an error now rather than in the
    middle of an epoch; ``classes`` checks every label against the model's classes.
    """
    path = Path(path)
    text = read_user_text(path, ManifestError, "manifest", encoding="utf-8-sig")
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise ManifestError(path, "the manifest is empty (it needs a header row with a 'slide' column)")
    try:
        dialect = csv.Sniffer().sniff(lines[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(lines, dialect)
    header = [h.strip().lower() for h in next(reader)]
    if "slide" not in header and "path" in header:
        header[header.index("path")] = "slide"
    if "slide" not in header:
        raise ManifestError(path, f"row 1: a manifest needs a 'slide' (or 'path') column; found: "
                                  f"{', '.join(header) or 'nothing'}")
    repeated = sorted({h for h in header if h in _COLUMNS and header.count(h) > 1})
    if repeated:
        raise ManifestError(path, f"row 1: column(s) {', '.join(repeated)} appear more than once")
    col = {name: header.index(name) for name in _COLUMNS if name in header}
    base = path.parent
    rows: list[ManifestRow] = []
    for line_no, record in enumerate(reader, start=2):
        if not record or all(not c.strip() for c in record) or record[0].lstrip().startswith("#"):
            continue
        rows.append(_parse_row(path, base, line_no, record, col, check_files))
    if not rows:
        raise ManifestError(path, "the manifest lists no slides")
    manifest = Manifest(path, rows)
    if classes is not None:
        manifest.check_labels(classes)
    return manifest


def _cell(record: list[str], col: dict[str, int], name: str) -> str | None:
    i = col.get(name)
    if i is None or i >= len(record):
        return None
    value = record[i].strip()
    return value or None


def _parse_row(
    path: Path, base: Path, line_no: int, record: list[str], col: dict[str, int], check_files: bool
) -> ManifestRow:
    def fail(reason: str) -> ManifestError:
        return ManifestError(path, f"row {line_no}: {reason}")

    slide_text = _cell(record, col, "slide")
    if slide_text is None:
        raise fail("the slide path is empty")
    slide = resolve_path(base, slide_text)
    if check_files and not slide.is_file():
        raise fail(f"slide {slide_text!r} not found" + (f" (looked for {slide})" if slide_text != str(slide) else ""))
    annotation = None
    annotation_text = _cell(record, col, "annotation")
    if annotation_text is not None:
        annotation = resolve_path(base, annotation_text)
        if check_files and not annotation.is_file():
            raise fail(f"annotation {annotation_text!r} not found")
    mpp = None
    mpp_text = _cell(record, col, "mpp")
    if mpp_text is not None:
        try:
            mpp = float(mpp_text)
        except ValueError:
            mpp = float("nan")
        if not (math.isfinite(mpp) and mpp > 0):
            raise fail(f"mpp {mpp_text!r} is not a positive number")
    split_text = _cell(record, col, "split")
    split = normalize_split(split_text) if split_text else "train"
    return ManifestRow(slide=slide, label=_cell(record, col, "label"), annotation=annotation,
                       split=split, mpp=mpp, line=line_no)


def write_manifest(path: str | os.PathLike, rows: Iterable[ManifestRow | dict]) -> Path:
    """Write rows as a manifest CSV (paths as given); a helper for recipes and tests."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(_COLUMNS)
        for r in rows:
            d = r.to_dict() if isinstance(r, ManifestRow) else r
            writer.writerow(["" if d.get(c) is None else d.get(c) for c in _COLUMNS])
    return path
