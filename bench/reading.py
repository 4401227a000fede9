"""Region reading throughput: the read-ahead stream (1 and 2 workers) against a plain OpenSlide loop.

``read_benchmark`` times reading and decoding the regions of one slide through
:func:`xt_core.stream.iter_region_batches` against the loop a lab would write first: one
OpenSlide handle, ``read_region`` region after region.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from xt_core.slide import open_slide
from xt_core.stream import iter_region_batches
from xt_core.tokenize import RegionGrid, make_region_grid


@dataclass
class ReadBenchmark:
    slide: str
    backend: str
    regions: int
    region_size: int
    target_mpp: float | None
    batch_size: int
    passes: int
    regions_per_s: dict[str, float] = field(default_factory=dict)
    machine: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def machine_info() -> dict[str, object]:
    """What the figures were measured on."""
    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


def read_benchmark(
    path: str,
    *,
    region_size: int = 512,
    target_mpp: float | None = None,
    batch_size: int | None = None,
    workers: tuple[int, ...] = (1, 2),
    min_seconds: float = 3.0,
    backend: str = "auto",
    mpp: float | None = None,
) -> ReadBenchmark:
    """Regions per second, read and decoded, for a sequential OpenSlide loop and our stream.

    Every configuration reads the same regions for the same number of whole passes
    (enough for the slowest to run ``min_seconds``), each pass on a freshly opened slide;
    a warm-up pass first fills the OS file cache so that disk speed does not favour
    whichever runs later.
    """
    from xt_core.settings import RunSettings

    batch_size = RunSettings(batch_size=batch_size).regions_per_batch(region_size)  # None: as classify
    slide = open_slide(path, backend=backend, mpp=mpp)
    grid = make_region_grid(slide, target_mpp=target_mpp, region_size=region_size, chunk_size=region_size)
    indices = np.arange(grid.n_regions)

    def ours(n_workers: int) -> None:
        # a fresh slide per pass, as the baseline opens a fresh OpenSlide: each pass decodes
        # every tile (the tile cache would otherwise serve later passes from memory)
        with open_slide(path, backend=backend, mpp=mpp) as fresh:
            for _ in iter_region_batches(fresh, grid, batch_size=batch_size, workers=n_workers, indices=indices):
                pass

    runners = {"sequential_openslide": lambda: _sequential_openslide(path, grid, indices)}
    for w in workers:
        runners[f"stream_{w}_workers"] = lambda w=w: ours(w)

    for run in runners.values():  # warm-up
        run()
    t0 = time.perf_counter()
    runners["sequential_openslide"]()
    one_pass = max(time.perf_counter() - t0, 1e-6)
    passes = max(1, int(np.ceil(min_seconds / one_pass)))

    result = ReadBenchmark(
        slide=str(path), backend=slide.backend, regions=len(indices), region_size=region_size,
        target_mpp=target_mpp, batch_size=batch_size, passes=passes, machine=machine_info(),
    )
    for name, run in runners.items():
        t0 = time.perf_counter()
        for _ in range(passes):
            run()
        elapsed = time.perf_counter() - t0
        result.regions_per_s[name] = round(passes * len(indices) / elapsed, 2)
    slide.close()
    return result


def _sequential_openslide(path: str, grid: RegionGrid, indices: np.ndarray) -> None:
    """The baseline: the loop most scripts start with."""
    import openslide

    level = grid.read_level if grid.read_level is not None else 0
    with openslide.OpenSlide(str(path)) as osr:
        for i in indices:
            region = grid.region(int(i))
            img = osr.read_region((int(region.box[0]), int(region.box[1])), level,
                                  (grid.region_size, grid.region_size))
            np.asarray(img.convert("RGB"))
