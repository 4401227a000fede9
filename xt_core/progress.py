"""A progress bar for one slide's regions: done of total, regions/s, time left.

``classify``/``segment`` show it on stderr only when stderr is a terminal and ``--quiet`` was
not given, so piped output, ``--json`` and logs stay clean; a batch shows it under its slides
bar. The engine only calls ``update(done, total)`` (a ``ProgressCallback``).
"""

from __future__ import annotations

import sys
from typing import Any


class RegionProgress:
    """``update`` is a :data:`xt_core.inference.ProgressCallback`; the bar appears on the first call."""

    def __init__(self, label: str, *, enabled: bool = True, stream: Any = None, terminal_only: bool = True,
                 position: int = 0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled and (is_tty or not terminal_only)
        self.label = label
        self.position = position
        self._bar: Any = None

    def update(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="region", desc=self.label, file=self.stream, leave=False,
                             dynamic_ncols=True, smoothing=0.1, position=self.position)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
