"""Exception types. Every error a user can cause names the file and the reason in one line.

The CLI prints ``error: <path>: <reason>`` for any :class:`XTError` and exits non-zero;
lab scripts catch :class:`XTError` (or a subclass) to skip a bad slide and go on.
"""

from __future__ import annotations

import os


class XTError(Exception):
    """Base of every error napari-xt raises on purpose (bad input, bad model file, ...)."""


class PathError(XTError):
    """An error about one file: ``str(err)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class SlideError(PathError):
    """A slide cannot be opened or read: missing, corrupt, truncated or unsupported."""


class MissingMppError(SlideError):
    """The slide has no pixel size and the work needs one."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(
            path,
            "the slide has no pixel size (microns per pixel) in its metadata; "
            "pass mpp= (CLI: --mpp) with the scanner's value, e.g. 0.25 for 40x or 0.5 for 20x",
        )


class ModelFileError(PathError):
    """A model file is missing, unsafe (pickle) or does not match its config."""
