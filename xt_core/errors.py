"""Exception types. Every error a user can cause names the file and the reason in one line.

Messages are in the engine's words (``mpp``, ``tissue threshold``), because a lab script or
the napari widget meets them as often as the CLI does. An error that has a remedy keeps it
apart in ``fix``; the CLI swaps in its own flag for it (``xt_core.cli._options.error_line``).
The CLI prints ``error: <path>: <reason>`` for any :class:`XTError` and exits non-zero; lab
scripts catch :class:`XTError` (or a subclass) to skip a bad slide and go on.
"""

from __future__ import annotations

import os


class XTError(Exception):
    """Base of every error napari-xt raises on purpose (bad input, bad model file, ...)."""

    def __reduce__(self):
        # Pickled whole (args and attributes, whatever the subclass's __init__ takes), so that a
        # slide's error raised on a Dask worker reaches the client as the same error.
        return (_restore_error, (type(self), self.args, dict(self.__dict__)))


def _restore_error(cls: type, args: tuple, state: dict) -> XTError:
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class PathError(XTError):
    """An error about one file: ``str(err)`` is ``"<path>: <reason>"`` (``"; <fix>"`` where one is known)."""

    def __init__(self, path: str | os.PathLike, reason: str, fix: str | None = None) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        self.fix = fix
        super().__init__(f"{self.path}: {reason}" + (f"; {fix}" if fix else ""))


class SlideError(PathError):
    """A slide cannot be opened or read: missing, corrupt, truncated or unsupported."""


class MissingMppError(SlideError):
    """The slide has no pixel size and the work needs one."""

    def __init__(self, path: str | os.PathLike, why: str | None = None) -> None:
        super().__init__(
            path,
            "the slide has no pixel size (microns per pixel) in its metadata" + (f" ({why})" if why else ""),
            fix="give it as mpp, the scanner's value, e.g. 0.25 for 40x or 0.5 for 20x",
        )


class NoTissueError(SlideError):
    """No region of the slide reaches the tissue threshold."""

    def __init__(self, path: str | os.PathLike, threshold: float) -> None:
        super().__init__(path, f"no region has tissue above the threshold {threshold}",
                         fix="lower the tissue threshold to analyse it anyway")


class ModelFileError(PathError):
    """A model file is missing, unsafe (pickle) or does not match its config."""


class NoDefaultModelError(ModelFileError):
    """This install has no bundled default model and none was given."""

    def __init__(self) -> None:
        super().__init__("default model", "no bundled default model in this install",
                         fix="give a model (a checkpoint folder)")


class SchedulerError(PathError):
    """A Dask scheduler that cannot be reached, or went away during a batch (``path``: its address)."""
