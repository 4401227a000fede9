"""The model behind the dock: what a checkpoint is (read from its config, no torch) and the one loaded.

A pathologist must see what a model is for before running it, so choosing a folder shows its
name, classes, working resolution and intended use at once, from ``config.json`` alone
(importing torch and reading weights takes seconds). The weights are loaded by the first run,
in the worker thread, and kept: later runs reuse the same model until another is chosen.
"""

from __future__ import annotations

import html
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from xt_core.errors import NoDefaultModelError

if TYPE_CHECKING:
    from xt_core.models.xt import XTModel

DEFAULT_KEY = "default"


@dataclass(frozen=True)
class ModelInfo:
    """What the dock shows about a checkpoint, and the defaults its controls start from."""

    key: str  # DEFAULT_KEY for the bundled model, else the checkpoint folder
    folder: Path
    name: str
    classes: tuple[str, ...]
    target_mpp: float | None
    tissue_threshold: float
    classification: bool
    segmentation: bool
    description: str
    intended_use: str
    not_for: str

    @property
    def is_default(self) -> bool:
        return self.key == DEFAULT_KEY

    @property
    def outputs(self) -> str:
        kinds = [k for k, on in (("slide classification", self.classification), ("segmentation", self.segmentation)) if on]
        return " + ".join(kinds)

    def card_html(self) -> str:
        """Name, classes, resolution, outputs, then what it is for and not for (rich text).

        The free-text description is left to the tooltip: the card must stay short enough to
        leave room for the controls.
        """
        e = html.escape
        mpp = f"{self.target_mpp:g} um/px" if self.target_mpp else "level 0"
        lines = [f"<b>{e(self.name)}</b>{' (bundled)' if self.is_default else ''}",
                 f"classes: {e(', '.join(self.classes))}",
                 f"works at {mpp}; gives {e(self.outputs)}"]
        if self.intended_use:
            lines.append(f"intended use: {e(self.intended_use)}")
        if self.not_for:
            lines.append(f"<b>not for:</b> {e(self.not_for)}")
        return "<br>".join(lines)


def describe_model(key: str) -> ModelInfo:
    """The :class:`ModelInfo` of the bundled model (``DEFAULT_KEY``) or of a checkpoint folder.

    Raises :class:`ModelFileError` naming the folder when it is not a checkpoint.
    """
    from xt_core.models.config import checkpoint_files, read_config_file

    weights, config_path = checkpoint_files(_default_folder() if key == DEFAULT_KEY else Path(key))
    folder = weights.parent
    config, record = read_config_file(config_path)
    return ModelInfo(
        key=key, folder=folder, name=config.name, classes=tuple(config.classes), target_mpp=config.target_mpp,
        tissue_threshold=config.tissue_threshold, classification=config.classification,
        segmentation=config.segmentation, description=config.description,
        intended_use=str(record.get("intended_use") or ""), not_for=str(record.get("not_for") or ""),
    )


class ModelCache:
    """The one loaded model, kept until a different one is asked for.

    Used from the worker thread (loading) and the GUI thread (forgetting when the user picks
    another model), hence the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: str | None = None
        self._model: "XTModel | None" = None
        self.loads = 0  # how many times weights were read: tests check that it is once

    def holds(self, key: str) -> bool:
        with self._lock:
            return self._model is not None and self._key == key

    def get(self, key: str) -> "XTModel":
        """The model for ``key``, loaded now unless it is the one kept."""
        from xt_core.api import resolve_model

        with self._lock:
            if self._model is None or self._key != key:
                self._model = None  # free the previous one before loading the next
                self._model = resolve_model(None if key == DEFAULT_KEY else key)
                self._key = key
                self.loads += 1
            return self._model

    def forget(self) -> None:
        with self._lock:
            self._key, self._model = None, None


def _default_folder() -> Path:
    from xt_core.models.default import default_model_path

    path = default_model_path()
    if path is None:
        raise NoDefaultModelError()
    return Path(path)
