"""Region batches read ahead by a thread pool, in a fixed order, in bounded memory.

Reading and decoding JPEG/JPEG2000 tiles is the slow part of whole-slide work on a CPU,
and the reader libraries release the GIL while they decode. A few threads therefore keep
the model fed. At most ``prefetch`` batches exist at once (in flight or waiting), so
memory is ``prefetch x batch_size x R x R x 3`` bytes whatever the slide's size, and
batches come out in raster order whatever the number of workers.

Why the readers run at background priority (Linux ``SCHED_IDLE``): on a CPU the model's
intra-op threads meet at a barrier after every operation, so a reader that preempts one of
them stalls all of them; reading 2% of the CPU cost the encoder 6% (default model, 20x, two
cores). Idle-priority readers only take cores the model leaves idle between its operations,
which was enough to keep it fed (0.98 of the encoder alone, against 0.93). Where other
processes keep every core busy, idle-priority threads would starve: when the consumer has
waited :data:`PATIENCE_S` for a batch while the readers got almost no CPU, the readers move to
normal priority for the rest of the pass (that batch, if a starved reader holds it, is read
again by the consumer itself).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout  # not the builtin before Python 3.11
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from xt_core.slide import Slide
from xt_core.tokenize import RegionGrid

logger = logging.getLogger(__name__)

#: Seconds the consumer waits for a background reader's batch before asking whether the readers
#: are starved: they are when, over that wait, they got less than :data:`STARVED_SHARE` of a core
#: between them (other processes hold every core; or they wait on a slow disk, where normal
#: priority costs nothing). Readers that are busy decoding a slow batch are waited for.
PATIENCE_S = 0.1
STARVED_SHARE = 0.25


@dataclass
class RegionBatch:
    """Pixels of consecutive encodable regions, with their places in the grid.

    ``images`` is uint8: numpy ``(N, R, R, 3)``, or with ``as_tensor`` a torch tensor of
    logical shape ``(N, 3, R, R)`` in channels-last memory (a view of the same buffer, so
    no copy is made; it is pinned when ``pin_memory`` was asked).
    """

    indices: np.ndarray  # (N,) raster indices into the grid
    rows: np.ndarray
    cols: np.ndarray
    images: Any

    def __len__(self) -> int:
        return len(self.indices)


def iter_region_batches(
    slide: Slide,
    grid: RegionGrid,
    *,
    batch_size: int = 8,
    workers: int = 2,
    prefetch: int | None = None,
    indices: Sequence[int] | np.ndarray | None = None,
    tissue_threshold: float | None = None,
    as_tensor: bool = False,
    pin_memory: bool = False,
) -> Iterator[RegionBatch]:
    """Yield the regions of ``grid`` in batches, raster order, read ahead by ``workers`` threads.

    Regions are ``indices`` if given, else those with tissue fraction >= ``tissue_threshold``
    (all when None): background is skipped but every batch says where its regions are.
    ``workers=0`` reads in the calling thread. ``prefetch`` bounds the batches held at
    once, the one the caller holds included (default ``2 * workers + 1``). ``pin_memory``
    (for CUDA) page-locks each batch in the reading thread so the copy to the GPU can be
    asynchronous. The reader threads run at background priority until they starve (see the
    module's docstring).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    order = np.asarray(indices if indices is not None else grid.tissue_indices(tissue_threshold), dtype=np.int64)
    groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def load(group: np.ndarray) -> RegionBatch:
        return _read_batch(slide, grid, group, as_tensor=as_tensor, pin_memory=pin_memory)

    if workers == 0:
        for group in groups:
            yield load(group)
        return

    depth = max(1, prefetch if prefetch is not None else 2 * workers + 1)
    readers = _ReadAhead(load, workers)
    pending: deque[tuple[np.ndarray, Future[RegionBatch]]] = deque()
    try:
        todo = iter(groups)
        for group in todo:
            pending.append((group, readers.submit(group)))
            if len(pending) >= depth:
                break
        while pending:
            group, future = pending.popleft()
            batch = readers.take(group, future, pending)
            yield batch
            # Refill only once the consumer is done with the batch it was given, so the
            # batches alive (being read, waiting, or in the consumer's hands) never exceed depth
            # (plus, once only, those a starved background reader still holds).
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, readers.submit(nxt)))
    finally:
        readers.close(future for _, future in pending)


class _ReadAhead:
    """Reader threads at background priority, moved to normal priority once they starve."""

    def __init__(self, load: Callable[[np.ndarray], RegionBatch], workers: int) -> None:
        self._load = load
        self._workers = workers
        self._clocks: list[int] = []  # the background readers' CPU-time clocks
        self._background = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xt-read",
                                              initializer=self._start_reader)
        self._foreground: ThreadPoolExecutor | None = None
        self._stragglers: set[Future[RegionBatch]] = set()  # background reads running at the switch

    def _start_reader(self) -> None:
        _run_in_background()
        try:
            self._clocks.append(time.pthread_getcpuclockid(threading.get_ident()))
        except (AttributeError, OSError):  # no per-thread clocks: a wait past PATIENCE_S is starvation
            pass

    def _readers_cpu(self) -> float:
        """CPU seconds the background readers have run, together."""
        total = 0.0
        for clock in list(self._clocks):
            try:
                total += time.clock_gettime(clock)
            except OSError:
                pass
        return total

    def _wait(self, future: Future[RegionBatch]) -> RegionBatch | None:
        """The batch, waiting while the background readers make progress; None once they starve."""
        cpu = self._readers_cpu()
        while True:
            try:
                return future.result(timeout=PATIENCE_S)
            except FutureTimeout:
                now = self._readers_cpu()
                if now - cpu < STARVED_SHARE * PATIENCE_S:
                    return None
                cpu = now

    def submit(self, group: np.ndarray) -> Future[RegionBatch]:
        return (self._foreground or self._background).submit(self._load, group)

    def take(self, group: np.ndarray, future: Future[RegionBatch],
             pending: deque[tuple[np.ndarray, Future[RegionBatch]]]) -> RegionBatch:
        """``group``'s batch; ``pending`` (the batches after it) is resubmitted if the readers starve."""
        if future.done():
            return future.result()
        if self._foreground is None:  # every read so far is a background one
            batch = self._wait(future)
            if batch is not None:
                return batch
            self._to_foreground(pending)
            self._stragglers.add(future)
        if future in self._stragglers and (future.cancel() or not future.done()):
            return self._load(group)  # a starved reader may hold it: read it here, at normal priority
        return future.result()

    def _to_foreground(self, pending: deque[tuple[np.ndarray, Future[RegionBatch]]]) -> None:
        logger.debug("reader threads waited %.2f s for a core: reading at normal priority from here", PATIENCE_S)
        self._foreground = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="xt-read-now")
        for i, (group, future) in enumerate(pending):
            if future.cancel():  # not started: hand it to the new readers
                pending[i] = (group, self._foreground.submit(self._load, group))
            else:
                self._stragglers.add(future)

    def close(self, futures: Iterator[Future[RegionBatch]]) -> None:
        """Cancel what has not started and wait for what has, starved background reads included:
        the caller may close the slide next, and a reader library must not be closed under a read."""
        for future in futures:
            future.cancel()
        for pool in (self._foreground, self._background):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def _run_in_background() -> None:
    """Reader thread initializer: run only on cores nothing else wants (Linux ``SCHED_IDLE``).

    Per thread on Linux (``0`` is the calling thread); elsewhere, or where the policy is
    refused, the thread keeps normal priority.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        pass


def _read_batch(
    slide: Slide, grid: RegionGrid, group: np.ndarray, *, as_tensor: bool, pin_memory: bool
) -> RegionBatch:
    images = grid.read_many(slide, group)
    rows, cols = np.divmod(group, grid.cols)
    out: Any = images
    if as_tensor or pin_memory:
        import torch

        tensor = torch.from_numpy(images)
        if pin_memory:
            tensor = tensor.pin_memory()
        out = tensor.permute(0, 3, 1, 2)  # NCHW view, channels-last in memory
    return RegionBatch(indices=group, rows=rows, cols=cols, images=out)
