"""Paths written in a user's file (a manifest, a training config) resolve against that file's folder."""

from __future__ import annotations

import os
from pathlib import Path


def resolve_path(base: str | os.PathLike, text: str) -> Path:
    """``text`` with ``~`` expanded; a relative path is taken from ``base``, so a file and the
    files it names can move together."""
    p = Path(os.path.expanduser(text))
    return p if p.is_absolute() else Path(base) / p
