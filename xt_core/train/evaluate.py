"""Evaluation of a model on the slides of a manifest: the training metrics, as JSON.

``evaluate(model, manifest, split=...)`` streams every slide through the model (no
gradient, no augmentation) and returns::

    {"n_slides", "classes", "split",
     "loss", "cls_loss", "seg_loss",                       # means over slides (what applies)
     "n", "accuracy", "balanced_accuracy", "macro_f1", "auc", "confusion_matrix",  # labelled slides
     "segmentation": {"cells", "accuracy", "balanced_accuracy", "macro_f1", "confusion_matrix"},  # if annotated
     "slides": [{"slide", "label", "prediction", "probabilities", "loss"}, ...]}

The confusion matrix is a list of rows: row = true class, column = predicted class, in the
order of ``classes``. AUC is one-vs-rest macro (``None`` when undefined).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from xt_core.models.xt import XTModel
from xt_core.train.annotations import IGNORE_INDEX
from xt_core.train.data import PreparedSlide, numbered, prepare_slides
from xt_core.train.manifest import Manifest, read_manifest
from xt_core.train.metrics import balanced_accuracy, classification_metrics, confusion_matrix, macro_f1
from xt_core.train.streaming import LossWeights, forward_features, forward_regions, slide_loss

__all__ = ["evaluate", "evaluate_prepared"]

Forward = Callable[[PreparedSlide], dict]


def evaluate(
    model: XTModel | str | os.PathLike,
    manifest: Manifest | str | os.PathLike,
    *,
    split: str | Sequence[str] | None = None,
    batch_size: int = 8,
    workers: int = 2,
    device: str | torch.device = "auto",
    amp: str = "auto",
    tissue_threshold: float | None = None,
    annotation_class_map: Mapping[str, str | None] | None = None,
    weights: LossWeights | None = None,
    progress: bool = False,
    feature_cache: str | os.PathLike | None = None,
) -> dict:
    """Metrics of ``model`` (an XTModel or a checkpoint path) on ``manifest``'s rows of ``split`` (None: all).

    ``feature_cache``: a frozen-mode feature cache folder (:mod:`xt_core.train.features`).
    Slides whose region features it holds for this model's region encoder (the key includes
    a hash of the encoder's weights, so another encoder never reads them) skip the region
    encoder; the others are encoded once and added. Comparing several context encoders
    trained on one frozen backbone then encodes the test slides once, not once per model.
    """
    from xt_core.inference import resolve_device
    from xt_core.models.checkpoint import load_model
    from xt_core.train.streaming import autocast_factory

    if not isinstance(model, XTModel):
        model = load_model(model)
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest, classes=model.config.classes)
    else:
        manifest.check_labels(model.config.classes)
    splits = [split] if isinstance(split, str) else list(split) if split is not None else []
    rows = manifest.split(*splits) if splits else list(manifest.rows)
    if not rows:
        from xt_core.train.manifest import ManifestError

        raise ManifestError(manifest.path, f"no rows in split {', '.join(splits)} (splits: {', '.join(manifest.splits)})")
    dev = resolve_device(device)
    amp_factory, _ = autocast_factory(dev, amp)
    model = model.to(dev)
    prepared = prepare_slides(numbered(manifest.rows, rows), model.config, model.tokens_per_side,
                              tissue_threshold=tissue_threshold, class_map=annotation_class_map)

    cache = None
    if feature_cache is not None:
        from xt_core.train.features import FeatureCache

        cache = FeatureCache(feature_cache, model, batch_size=batch_size, workers=workers, device=dev, amp=amp_factory)
    forward = slide_forward(model, batch_size=batch_size, workers=workers, device=dev, amp=amp_factory, cache=cache)
    result = evaluate_prepared(model, prepared, forward, weights=weights, progress=progress)
    result["split"] = ",".join(splits) if splits else None
    return result


def slide_forward(model: XTModel, *, batch_size: int, workers: int, device: torch.device, amp,
                  cache=None) -> Forward:
    """``forward(slide)`` for :func:`evaluate_prepared` (evaluation and training's validation):
    the head outputs from the region features ``cache`` (a :class:`~xt_core.train.features.FeatureCache`)
    holds where one is given, else from the slide's regions through the region encoder."""
    if cache is not None:
        def forward(p: PreparedSlide) -> dict:
            rows, cols = p.rows_cols
            return forward_features(model, cache.get(p, 0), rows, cols, device=device, amp=amp)
    else:
        def forward(p: PreparedSlide) -> dict:
            with p.open() as slide:
                source = p.source(slide, workers=workers, pin_memory=device.type == "cuda")
                return forward_regions(model, source, batch_size=batch_size, device=device, amp=amp)
    return forward


def evaluate_prepared(
    model: XTModel, slides: Sequence[PreparedSlide], forward: Forward, *,
    weights: LossWeights | None = None, progress: bool = False, desc: str = "evaluate",
) -> dict:
    """Metrics over prepared slides; ``forward(slide)`` gives the head outputs (no gradient)."""
    from tqdm.auto import tqdm

    weights = weights or LossWeights(label_smoothing=0.0)
    classes = list(model.config.classes)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    labels, probs, losses, per_slide = [], [], {"loss": [], "cls_loss": [], "seg_loss": []}, []
    seg_true, seg_pred = [], []
    try:
        for p in tqdm(slides, desc=desc, disable=not progress, leave=False):
            out = forward(p)
            targets = p.targets()
            loss, parts = slide_loss(out, targets, weights)
            for key in losses:
                if key in parts:
                    losses[key].append(parts[key])
            record = {"slide": str(p.row.slide), "label": p.row.label, "loss": parts.get("loss")}
            if "logits" in out:
                pr = torch.softmax(out["logits"].float(), -1)[0].cpu().numpy()
                record["prediction"] = classes[int(pr.argmax())]
                record["probabilities"] = {c: float(v) for c, v in zip(classes, pr)}
                if p.label is not None:
                    labels.append(p.label)
                    probs.append(pr)
            if "seg_logits" in out and targets.seg is not None:
                tgt = targets.seg.reshape(-1).numpy()
                pred = out["seg_logits"].float()[0].reshape(-1, len(classes)).argmax(-1).cpu().numpy()
                keep = tgt != IGNORE_INDEX
                seg_true.append(tgt[keep])
                seg_pred.append(pred[keep])
            per_slide.append(record)
    finally:
        for module, training in modes:
            module.training = training
    result: dict = {"n_slides": len(slides), "classes": classes}
    for key, values in losses.items():
        result[key] = float(np.mean(values)) if values else None
    if probs:
        result.update(classification_metrics(np.array(labels), np.stack(probs), classes))
    else:
        result.update({"n": 0, "accuracy": None, "balanced_accuracy": None, "macro_f1": None, "auc": None,
                       "confusion_matrix": None})
    if seg_true:
        t, pr = np.concatenate(seg_true), np.concatenate(seg_pred)
        if t.size:
            result["segmentation"] = {
                "cells": int(t.size),
                "accuracy": float((t == pr).mean()),
                "balanced_accuracy": balanced_accuracy(t, pr, len(classes)),
                "macro_f1": macro_f1(t, pr, len(classes)),
                "confusion_matrix": confusion_matrix(t, pr, len(classes)).tolist(),
            }
    result["slides"] = per_slide
    return result


def write_metrics(path: str | os.PathLike, result: dict) -> Path:
    from xt_core.outputs.atomic import write_json

    return write_json(path, result)
