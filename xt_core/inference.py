"""``predict_slide``: a slide in, a label and a heatmap out, in memory bounded by the batch.

Regions stream from the reader threads through the region encoder in batches; only their
small token maps are kept. Background regions are skipped but keep their grid places. The
context encoder then reads the token sequence (each encoder bounds its own working memory:
segments with memory, a chunked scan, query chunks), and the heads turn it into class
probabilities for the slide and for every token.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from xt_core import __version__, runtime
from xt_core.errors import NoTissueError
from xt_core.models.xt import XTModel
from xt_core.preview import place_regions, token_blocks
from xt_core.settings import OptionError, RunSettings
from xt_core.slide import Slide
from xt_core.stream import iter_region_batches
from xt_core.tissue import TissueMask, tissue_mask
from xt_core.tokenize import RegionGrid, make_region_grid


@dataclass
class SlideResult:
    """What a model says about one slide, with the geometry to draw it on the slide.

    ``heatmap`` is ``(rows, cols, C)`` float32 class probabilities on the token grid (NaN
    where regions were skipped as background). Heatmap pixel (i, j) covers level-0 pixels
    ``origin + (j, i) * token_size`` to ``origin + (j + 1, i + 1) * token_size``.
    """

    slide: str
    classes: list[str]
    probabilities: np.ndarray | None
    heatmap: np.ndarray | None
    origin: tuple[float, float]
    token_size: tuple[float, float]
    mpp: tuple[float, float] | None
    target_mpp: float | None
    grid: RegionGrid
    tissue: TissueMask
    regions_total: int
    regions_tissue: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def prediction(self) -> str | None:
        if self.probabilities is None:
            return None
        return self.classes[int(np.argmax(self.probabilities))]

    def record(self) -> dict[str, Any]:
        """The JSON-ready record the CLI writes (everything but the arrays)."""
        return {
            "slide": self.slide,
            "classes": list(self.classes),
            "probabilities": (
                {c: float(p) for c, p in zip(self.classes, self.probabilities)} if self.probabilities is not None else None
            ),
            "prediction": self.prediction,
            "mpp": list(self.mpp) if self.mpp else None,
            "target_mpp": self.target_mpp,
            "grid": {
                "rows": self.grid.rows,
                "cols": self.grid.cols,
                "region_size": self.grid.region_size,
                "region_size_px": list(self.grid.region_size_level0),
                "token_size_px": list(self.token_size),
                "heatmap_shape": list(self.heatmap.shape[:2]) if self.heatmap is not None else None,
            },
            "regions": {"total": self.regions_total, "tissue": self.regions_tissue},
            "tissue_fraction": round(self.tissue.fraction, 4),
            "timing": {k: round(v, 4) for k, v in self.timings.items()},
            "xt_slide_version": __version__,
        }


#: ``progress(done, total)``: regions encoded so far, of all the run will encode.
ProgressCallback = Callable[[int, int], None]
#: ``on_batch(rows, cols, tokens)``: each encoded batch's region places and tokens ``(k, t*t, D)``
#: before context, e.g. for a preview that grows while the slide is read (the napari widget).
BatchCallback = Callable[[np.ndarray, np.ndarray, torch.Tensor], None]
#: ``select(grid)``: a boolean mask over the grid's regions (raster order) to restrict a run to,
#: e.g. the regions under a drawn shape or in the field of view.
RegionSelector = Callable[[RegionGrid], np.ndarray]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; CUDA without a GPU is an :class:`OptionError`."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise OptionError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OptionError("the CUDA device was asked for, but this torch sees no CUDA GPU")
    return dev


def predict_slide(
    model: XTModel,
    slide: Slide,
    settings: RunSettings | None = None,
    *,
    tissue: TissueMask | None = None,
    progress: ProgressCallback | None = None,
    on_batch: BatchCallback | None = None,
    select: RegionSelector | None = None,
) -> SlideResult:
    """Classify and segment ``slide`` with ``model``, streaming its regions.

    ``settings`` (default: :class:`RunSettings` defaults) chooses the working resolution and
    tissue threshold (the model's where unset), the device, batch size and reader threads.
    ``tissue`` reuses a mask already computed; ``progress(done, total)`` is called after
    every batch of regions and ``on_batch(rows, cols, tokens)`` with its tokens; ``select``
    restricts the run to some regions (those it marks and that have tissue); the context
    encoder then sees only those. On CUDA: autocast (bf16 where supported, else fp16),
    channels-last, pinned batches copied without blocking, and a batch that runs out of GPU
    memory is retried in halves. On CPU: inference mode, channels-last, reading overlapped
    with compute.
    """
    settings = settings if settings is not None else RunSettings()
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    runtime.configure()  # once per process: allocator settings (see xt_core/runtime.py)
    dev = resolve_device(settings.device)
    cfg = model.config
    model = model.to(dev).eval()
    model.region_encoder.to(memory_format=torch.channels_last)  # faster convolutions on CPU and CUDA
    threshold = settings.region_threshold(cfg.tissue_threshold)
    target_mpp = settings.working_mpp(cfg.target_mpp)

    t0 = time.perf_counter()
    tissue = tissue if tissue is not None else tissue_mask(slide)
    grid = make_region_grid(slide, target_mpp=target_mpp, region_size=cfg.region_size,
                            chunk_size=cfg.chunk_size, tissue=tissue)
    indices = grid.tissue_indices(threshold)
    if select is not None:
        chosen = np.asarray(select(grid), dtype=bool).reshape(-1)
        if chosen.shape != (grid.n_regions,):
            raise ValueError(f"select returned {chosen.shape[0]} flags for {grid.n_regions} regions")
        indices = indices[chosen[indices]]
    timings["tissue"] = time.perf_counter() - t0
    if len(indices) == 0:
        raise NoTissueError(slide.path, threshold)

    with torch.inference_mode(), _autocast(dev, settings.amp):
        t0 = time.perf_counter()
        tokens, rows, cols, wait = _encode_stream(model, slide, grid, indices, dev, settings, progress, on_batch)
        timings["read_wait"] = wait
        timings["encode"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        context = model.contextualize(tokens.to(dev), rows, cols)
        timings["context"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.heads(context)
        probabilities = None
        if "logits" in out:
            probabilities = torch.softmax(out["logits"].float(), dim=-1)[0].cpu().numpy()
        heatmap = None
        if "seg_logits" in out:
            seg = torch.softmax(out["seg_logits"].float(), dim=-1)[0].cpu().numpy()
            heatmap = _layout_heatmap(seg, rows.numpy(), cols.numpy(), grid, model.tokens_per_side)
        timings["heads"] = time.perf_counter() - t0
    del tokens, context, out
    runtime.release_memory()  # the heap kept for the batches goes back to the system
    timings["total"] = time.perf_counter() - t_start

    side = model.heatmap_side
    token_size = (grid.region_size_level0[0] / side, grid.region_size_level0[1] / side)
    return SlideResult(
        slide=str(slide.path), classes=list(cfg.classes), probabilities=probabilities, heatmap=heatmap,
        origin=(0.0, 0.0), token_size=token_size, mpp=slide.mpp, target_mpp=target_mpp, grid=grid,
        tissue=tissue, regions_total=grid.n_regions, regions_tissue=int(len(indices)), timings=timings,
    )


def _encode_stream(
    model: XTModel, slide: Slide, grid: RegionGrid, indices: np.ndarray, dev: torch.device,
    settings: RunSettings, progress: ProgressCallback | None, on_batch: BatchCallback | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Encode every chosen region, in raster order; returns tokens (N, t*t, D) on the CPU."""
    n, tpr, dim = len(indices), model.tokens_per_region, model.config.context_dim
    tokens = torch.empty((n, tpr, dim), dtype=torch.float32)
    rows = torch.empty(n, dtype=torch.long)
    cols = torch.empty(n, dtype=torch.long)
    filled, wait = 0, 0.0
    batch_size = settings.regions_per_batch(model.config.region_size)
    batches = iter_region_batches(slide, grid, batch_size=batch_size, workers=settings.workers,
                                  indices=indices, as_tensor=True, pin_memory=dev.type == "cuda")
    t_wait = time.perf_counter()
    for batch in batches:
        wait += time.perf_counter() - t_wait
        images = batch.images.to(dev, non_blocking=True)
        out = _encode_with_oom_retry(model, images)
        k = len(batch)
        tokens[filled : filled + k] = out.float().cpu()
        rows[filled : filled + k] = torch.from_numpy(batch.rows)
        cols[filled : filled + k] = torch.from_numpy(batch.cols)
        filled += k
        if on_batch is not None:
            on_batch(batch.rows, batch.cols, tokens[filled - k : filled])
        if progress is not None:
            progress(filled, n)
        t_wait = time.perf_counter()
    return tokens, rows, cols, wait


def _encode_with_oom_retry(model: XTModel, images: torch.Tensor) -> torch.Tensor:
    """Encode a batch; on a CUDA out-of-memory error, encode it in halves (recursively)."""
    try:
        return model.encode_regions(images)
    except torch.cuda.OutOfMemoryError:
        if images.shape[0] == 1:
            raise
        torch.cuda.empty_cache()
        half = images.shape[0] // 2
        return torch.cat([_encode_with_oom_retry(model, images[:half]), _encode_with_oom_retry(model, images[half:])])


def _autocast(dev: torch.device, amp: bool):
    if not amp or dev.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _layout_heatmap(
    seg: np.ndarray, rows: np.ndarray, cols: np.ndarray, grid: RegionGrid, t: int
) -> np.ndarray:
    """Per-token probabilities ``(L, u, u, C)`` in sequence order -> ``(rows*t*u, cols*t*u, C)``."""
    _, u, _, c = seg.shape
    side = t * u
    heat = np.full((grid.rows * side, grid.cols * side, c), np.nan, dtype=np.float32)
    place_regions(heat, rows, cols, token_blocks(seg, t))
    return heat
