"""Region batches read ahead by a thread pool, in a fixed order, in bounded memory.

Reading and decoding JPEG/JPEG2000 tiles is the slow part of whole-slide work on a CPU,
and the reader libraries release the GIL while they decode. A few threads therefore keep
the model fed. At most ``prefetch`` batches exist at once (in flight or waiting), so
memory is ``prefetch x batch_size x R x R x 3`` bytes whatever the slide's size, and
batches come out in raster order whatever the number of workers.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from xt_core.slide import Slide
from xt_core.tokenize import RegionGrid


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
    once, the one the caller holds included (default ``2 * workers + 1``). ``pin_memory`` (for CUDA) page-locks each batch in the
    reading thread so the copy to the GPU can be asynchronous.
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
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xt-read")
    pending: deque[Future[RegionBatch]] = deque()
    try:
        todo = iter(groups)
        for group in todo:
            pending.append(pool.submit(load, group))
            if len(pending) >= depth:
                break
        while pending:
            yield pending.popleft().result()
            # Refill only once the consumer is done with the batch it was given, so the
            # batches alive (being read, waiting, or in the consumer's hands) never exceed depth.
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(load, nxt))
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


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
