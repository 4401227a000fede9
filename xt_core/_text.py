"""One-line text from an exception, for error messages that promise a single line.

A library's exception text (timm's, safetensors', torch's) can run over many lines; the
engine's errors quote it inside ``"<path>: <reason>"``, which must stay one line.
"""

from __future__ import annotations


def one_line(exc: BaseException | None, limit: int = 300) -> str:
    """``str(exc)`` with white space folded and cut to ``limit`` characters (its type if empty)."""
    text = " ".join(str(exc).split()) if exc is not None else ""
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
