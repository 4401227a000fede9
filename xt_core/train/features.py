"""The frozen-encoder feature cache: region features per slide, computed once, as safetensors.

In ``mode="frozen"`` the region encoder does not train, so what it says about a slide's
regions never changes: the pooled backbone features ``(N, t*t, C)`` (before the projection
to the context width, which still trains) are computed once and cached; every epoch after
that is projection + context + heads on a few floats per region, fast on a CPU.

A cache file is ``<folder>/<key>.safetensors`` holding ``features`` (float32), ``indices``
(the regions' raster indices), ``rows`` and ``cols``. The key is a SHA-256 of everything the
features depend on: the slide's absolute path, size and modification time; the region
encoder's config (backbone, stage, kwargs, region and chunk size, target mpp, token pool)
and a hash of its weights; the regions chosen; and, for augmented views, the view number,
the seed and the augmentation settings. A changed slide, model or setting gives a new key,
never a stale hit. Files are written atomically; delete the folder to reclaim the space.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from xt_core.models.xt import XTModel
from xt_core.outputs.atomic import atomic_path
from xt_core.train.augment import AugmentConfig, region_seeds
from xt_core.train.data import PreparedSlide
from xt_core.train.streaming import AmpFactory, encode_features

__all__ = ["FeatureCache", "encoder_fingerprint", "view_seeds"]

#: ``epoch`` argument of :func:`region_seeds` for augmented feature views (far from real epochs).
_VIEW_EPOCH_BASE = 1 << 40


def encoder_fingerprint(model: XTModel) -> str:
    """SHA-256 of the region encoder's config and weights (what cached features depend on)."""
    cfg = model.config
    h = hashlib.sha256()
    h.update(json.dumps({
        "region_encoder": cfg.region_encoder, "stage": cfg.stage, "kwargs": cfg.region_encoder_kwargs,
        "region_size": cfg.region_size, "chunk_size": cfg.chunk_size, "target_mpp": cfg.target_mpp,
        "token_pool": cfg.token_pool,
    }, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.region_encoder.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def view_seeds(seed: int, view: int, prepared: PreparedSlide) -> np.ndarray:
    return region_seeds(seed, _VIEW_EPOCH_BASE + view, prepared.number, prepared.indices)


class FeatureCache:
    """Cached features of slides for one (frozen) region encoder."""

    def __init__(self, folder: str | os.PathLike, model: XTModel, *, batch_size: int = 8, workers: int = 2,
                 device: str | torch.device = "cpu", amp: AmpFactory = contextlib.nullcontext,
                 augment: AugmentConfig | None = None, seed: int = 0) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.batch_size = batch_size
        self.workers = workers
        self.device = torch.device(device)
        self.amp = amp
        self.augment = augment
        self.seed = seed
        self.fingerprint = encoder_fingerprint(model)
        self.hits = 0
        self.misses = 0

    def key(self, prepared: PreparedSlide, view: int = 0) -> str:
        path = Path(prepared.row.slide).resolve()
        stat = path.stat()
        h = hashlib.sha256()
        record = {
            "slide": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "mpp": prepared.row.mpp,
            "encoder": self.fingerprint, "view": view,
        }
        if view > 0:
            record["seed"] = self.seed
            record["number"] = prepared.number
            record["augment"] = (self.augment or AugmentConfig(enabled=False)).to_dict()
        h.update(json.dumps(record, sort_keys=True).encode())
        h.update(np.ascontiguousarray(prepared.indices, dtype=np.int64).tobytes())
        return h.hexdigest()[:32]

    def path(self, prepared: PreparedSlide, view: int = 0) -> Path:
        return self.folder / f"{self.key(prepared, view)}.safetensors"

    def get(self, prepared: PreparedSlide, view: int = 0) -> torch.Tensor:
        """Features ``(N, t*t, C)`` float32 on the CPU, computed and cached on a miss."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.path(prepared, view)
        if path.is_file():
            try:
                data = load_file(str(path))
                if np.array_equal(data["indices"].numpy(), prepared.indices):
                    self.hits += 1
                    return data["features"]
            except (SafetensorError, OSError, KeyError, ValueError):
                pass  # a damaged file is recomputed
        self.misses += 1
        features = self.compute(prepared, view)
        rows, cols = prepared.rows_cols
        tensors = {"features": features.contiguous(), "indices": torch.from_numpy(prepared.indices.astype(np.int64)),
                   "rows": rows.contiguous(), "cols": cols.contiguous()}
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"slide": str(prepared.row.slide), "view": str(view)})
        return features

    def compute(self, prepared: PreparedSlide, view: int = 0) -> torch.Tensor:
        seeds = augment = None
        if view > 0 and self.augment is not None and self.augment.active:
            seeds, augment = view_seeds(self.seed, view, prepared), self.augment
        model = self.model
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with prepared.open() as slide, torch.no_grad():
                source = prepared.source(slide, workers=self.workers, seeds=seeds, augment=augment,
                                         pin_memory=self.device.type == "cuda")
                parts = []
                for _, images in source.batches(self.batch_size):
                    with self.amp():
                        parts.append(encode_features(model, images.to(self.device)).float().cpu())
        finally:
            for module, training in modes:
                module.training = training
        return torch.cat(parts)

    def view_targets(self, prepared: PreparedSlide, view: int):
        """The slide's targets as seen by feature view ``view`` (flips/rotations applied)."""
        if view > 0 and self.augment is not None and self.augment.active:
            return prepared.targets(view_seeds(self.seed, view, prepared), self.augment)
        return prepared.targets()
