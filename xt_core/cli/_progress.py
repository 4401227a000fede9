"""A progress bar for one slide's regions on a terminal: done of total, regions/s, time left.

Shown on stderr only when stderr is a terminal and ``--quiet`` was not given, so piped output,
``--json`` and logs stay clean. The engine only calls ``update(done, total)``.
"""

from __future__ import annotations

import sys
from typing import Any


class RegionProgress:
    """``update`` is a :data:`xt_core.inference.ProgressCallback`; the bar appears on the first call."""

    def __init__(self, label: str, *, enabled: bool = True, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.label = label
        self._bar: Any = None

    def update(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="region", desc=self.label, file=self.stream, leave=False,
                             dynamic_ncols=True, smoothing=0.1)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
