"""Atomic writes: a file appears whole under its final name, or not at all.

A killed batch, a full disk or an exception halfway through must never leave a
half-written output that a later ``--resume`` would take for a finished one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps the final suffix (writers such as Pillow and tifffile choose
    the format from it) and starts with ``.`` so directory listings and globs skip it.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(final.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file private (0600); outputs in a shared lab folder should get
        # the permissions any new file would (0666 less the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically; returns the final path."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return Path(path)
