"""Paths written in a user's file (a manifest, a training config) resolve against that file's folder."""

from __future__ import annotations

import os
from pathlib import Path


def resolve_path(base: str | os.PathLike, text: str) -> Path:
    """``text`` with ``~`` expanded; a relative path is taken from ``base``, so a file and the
    files it names can move together."""
    p = Path(os.path.expanduser(text))
    return p if p.is_absolute() else Path(base) / p


def read_user_text(path: Path, error: type, what: str, encoding: str = "utf-8") -> str:
    """The text of a file a user named (a manifest, a config), or ``error(path, reason)`` in one line."""
    if not path.is_file():
        raise error(path, f"{what} not found" if not path.exists() else f"{what} is not a file")
    try:
        return path.read_text(encoding=encoding)
    except (OSError, UnicodeDecodeError) as exc:
        raise error(path, f"cannot read the {what} as UTF-8 text: {exc}") from None
