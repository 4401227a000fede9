"""Model throughput: ``predict_slide`` end to end (reading overlapped with encoding) against the
same region encoder on in-memory batches, the compute limit of the machine.
"""

from __future__ import annotations

import os
import time

from xt_bench.reading import machine_info

from xt_core.slide import open_slide
from xt_core.stream import iter_region_batches
from xt_core.tokenize import make_region_grid

STANDIN_NOTE = ("untrained stand-in (the bundled default model is not installed): EfficientNet-Lite0 with "
                "ImageNet weights at 512 px regions / 256 px chunks, 0.5 um/px, random Transformer-XL context; "
                "the same compute as a real model of that configuration")


def standin_model():
    """The model the bench uses while no default model is bundled: real encoder weights, random rest."""
    import torch

    from xt_core.models.config import XTConfig
    from xt_core.models.xt import create_model

    torch.manual_seed(0)
    config = XTConfig(classes=["a", "b", "c"], region_encoder="efficientnet_lite0", region_size=512, chunk_size=256,
                      target_mpp=0.5, token_pool=2, context_encoder="transformer_xl", context_dim=192,
                      name="bench-standin")
    return create_model(config, region_weights="package").eval()


def load_bench_model(model=None):
    """``(model, description)``: a checkpoint path, an XTModel, or None for the default model.

    None means ``xt_core.models.default.default_model()`` where its checkpoint is installed,
    else :func:`standin_model` (and the description says so).
    """
    from xt_core.models.xt import XTModel

    if isinstance(model, XTModel):
        return model.eval(), f"given model {model.config.name!r}"
    if model is not None:
        from xt_core.models.checkpoint import load_model

        return load_model(model), f"checkpoint {model}"
    try:
        from xt_core.models import (
            default,  # the bundled model, where this version has one
        )
    except ModuleNotFoundError as exc:
        if exc.name != "xt_core.models.default":
            raise
        return standin_model(), STANDIN_NOTE
    if default.default_model_path() is None:  # an install without the checkpoint files
        return standin_model(), STANDIN_NOTE
    return default.default_model().eval(), f"bundled default model {default.DEFAULT_MODEL_NAME}"


def _peak_rss_mb() -> float:
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _cpu_times() -> tuple[float, float]:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


def encoder_benchmark(model, images, *, batches: int, warmup: int = 2) -> dict[str, float]:
    """Regions/s of ``model.encode_regions`` alone on one in-memory uint8 batch, ``batches`` times.

    Returns ``regions_per_s`` (over all batches), ``best_batch_regions_per_s`` and the CPU
    user/system seconds spent.
    """
    import torch

    n = int(images.shape[0])
    with torch.inference_mode():
        for _ in range(warmup):
            model.encode_regions(images).float().cpu()
        user0, sys0 = _cpu_times()
        times = []
        t0 = time.perf_counter()
        for _ in range(batches):
            t1 = time.perf_counter()
            model.encode_regions(images).float().cpu()
            times.append(time.perf_counter() - t1)
        elapsed = time.perf_counter() - t0
        user1, sys1 = _cpu_times()
    return {
        "regions_per_s": batches * n / elapsed,
        "best_batch_regions_per_s": n / min(times),
        "seconds": elapsed,
        "cpu_user_s": user1 - user0,
        "cpu_sys_s": sys1 - sys0,
    }


def model_benchmark(
    slide_path: str,
    model=None,
    *,
    batch_size: int | None = None,
    workers: int = 2,
    repeats: int = 3,
    backend: str = "auto",
    mpp: float | None = None,
    device: str = "cpu",
) -> dict:
    """End-to-end regions/s of :func:`~xt_core.inference.predict_slide` against the encoder alone.

    * ``end_to_end_regions_per_s``: regions encoded / the wall time of predict_slide's encode
      stage, in which ``workers`` threads read and decode the regions while the model encodes
      (the first batch's read is in it; tissue detection, context encoder and heads are not:
      ``end_to_end_total_regions_per_s`` counts the whole call).
    * ``encoder_only_regions_per_s``: the same model's ``encode_regions`` (region encoder,
      token pool, projection: exactly the encode stage's compute), same batch size,
      channels-last, on a batch of the slide's own regions already in memory as uint8, after
      a warm-up: the compute limit of this machine.
    * ``ratio``: the first over the second.

    Both are measured ``repeats`` times, alternately, and the best of each is kept (other work
    on the machine only ever slows a run down). A slide without tissue is benched on all
    regions. ``peak_rss_mb`` is the process's peak resident memory.
    """
    import torch

    from xt_core import runtime
    from xt_core.inference import predict_slide, resolve_device
    from xt_core.settings import RunSettings
    from xt_core.tissue import tissue_mask

    applied = runtime.configure()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    model, description = load_bench_model(model)
    dev = resolve_device(device)
    slide = open_slide(slide_path, backend=backend, mpp=mpp)
    try:
        cfg = model.config
        batch_size = RunSettings(batch_size=batch_size).regions_per_batch(cfg.region_size)  # None: as classify
        tissue = tissue_mask(slide)
        grid = make_region_grid(slide, target_mpp=cfg.target_mpp, region_size=cfg.region_size,
                                chunk_size=cfg.chunk_size, tissue=tissue)
        threshold = cfg.tissue_threshold
        if len(grid.tissue_indices(threshold)) == 0:
            threshold = 0.0  # no tissue found: bench on every region
        indices = grid.tissue_indices(threshold)

        # The encoder's input: the slide's first regions, read once, as predict_slide gets them.
        first = next(iter_region_batches(slide, grid, batch_size=batch_size, workers=0,
                                         indices=indices[:batch_size], as_tensor=True))
        images = first.images
        if images.shape[0] < batch_size:
            reps = -(-batch_size // images.shape[0])
            images = torch.cat([images] * reps)[:batch_size].contiguous(memory_format=torch.channels_last)
        model = model.to(dev).eval()
        model.region_encoder.to(memory_format=torch.channels_last)
        images = images.to(dev)
        batches = max(2, -(-len(indices) // batch_size))
        with torch.inference_mode():  # first calls build the kernels' plans: not part of any figure
            for _ in range(2):
                model.encode_regions(images)

        e2e_runs, enc_runs = [], []
        for _ in range(max(1, repeats)):
            user0, sys0 = _cpu_times()
            result = predict_slide(model, slide, RunSettings(batch_size=batch_size, workers=workers, device=str(dev),
                                   tissue_threshold=threshold), tissue=tissue)
            user1, sys1 = _cpu_times()
            t = result.timings
            e2e_runs.append({
                "regions_per_s": result.regions_tissue / t["encode"],
                "encode_s": t["encode"], "read_wait_s": t["read_wait"], "total_s": t["total"],
                "cpu_user_s": user1 - user0, "cpu_sys_s": sys1 - sys0,
            })
            enc_runs.append(encoder_benchmark(model, images, batches=batches, warmup=1))
        e2e = max(e2e_runs, key=lambda r: r["regions_per_s"])
        enc = max(enc_runs, key=lambda r: r["regions_per_s"])
    finally:
        slide.close()
    e2e_rate, enc_rate = e2e["regions_per_s"], enc["regions_per_s"]
    return {
        "slide": str(slide_path),
        "model": description,
        "region_encoder": model.config.region_encoder,
        "region_size": model.config.region_size,
        "chunk_size": model.config.chunk_size,
        "target_mpp": model.config.target_mpp,
        "regions": int(len(indices)),
        "regions_total": int(grid.n_regions),
        "tissue_threshold": threshold,
        "batch_size": batch_size,
        "workers": workers,
        "repeats": max(1, repeats),
        "device": str(dev),
        "end_to_end_regions_per_s": round(e2e_rate, 2),
        "encoder_only_regions_per_s": round(enc_rate, 2),
        "ratio": round(e2e_rate / enc_rate, 3),
        "peak_rss_mb": _peak_rss_mb(),
        "end_to_end_total_regions_per_s": round(len(indices) / e2e["total_s"], 2),
        "end_to_end": {k: round(v, 3) for k, v in e2e.items()},
        "end_to_end_all_regions_per_s": [round(r["regions_per_s"], 2) for r in e2e_runs],
        "encoder_only": {k: round(v, 3) for k, v in enc.items()},
        "encoder_only_all_regions_per_s": [round(r["regions_per_s"], 2) for r in enc_runs],
        "channels_last": bool(model.region_encoder.channels_last),
        "runtime": applied,
        "load_average": [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
        "machine": machine_info(),
        "measured": ("end_to_end_regions_per_s = regions / wall time of predict_slide's encode stage (reading "
                     "overlapped, first batch's read included; tissue detection, context and heads excluded: "
                     "end_to_end_total_regions_per_s counts the whole call); best of `repeats` runs, as is "
                     "encoder_only_regions_per_s"),
    }
