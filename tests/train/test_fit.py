"""End-to-end training on real tiles: learning, resuming, checkpoints, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASSES, TILES, group_near_duplicates, make_segmentation_mosaics, tiny_model

from xt_core.models.checkpoint import load_model
from xt_core.train import evaluate, fit


def _config(manifest: Path, out: Path, **kw) -> dict:
    cfg = dict(model=tiny_model(), region_weights="efficientnet_lite0_imagenet", manifest=str(manifest),
               out_dir=str(out), epochs=3, lr=1e-4, batch_size=4, workers=0, warmup_epochs=0.5, progress=False)
    cfg.update(kw)
    return cfg


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_near_duplicates_are_grouped(lc25000) -> None:
    files = sorted((TILES / "lung_n").glob("*.jpeg"))
    groups = group_near_duplicates(files)
    sizes = np.bincount(np.unique(groups, return_inverse=True)[1])
    assert sizes.max() >= 2 and len(sizes) >= 80  # a few duplicate groups among mostly distinct tiles


def test_frozen_training_beats_chance_on_held_out_tiles(mosaic_manifest: Path, tmp_path: Path) -> None:
    """Frozen ImageNet encoder, context + heads trained: held-out mosaics (other tile groups) classified."""
    result = fit(_config(mosaic_manifest, tmp_path / "run", mode="frozen", epochs=6, lr=1e-3,
                         augment={"enabled": False}))
    records = _records(tmp_path / "run")
    assert [r["epoch"] for r in records] == list(range(1, 7)) and records == result.history
    assert records[-1]["train_loss"] < 0.5 * records[0]["train_loss"]
    last = records[-1]
    assert last["val_accuracy"] >= 0.75 and last["val_balanced_accuracy"] >= 0.75  # chance: 1/3
    assert last["val_auc"] > 0.9 and last["val_macro_f1"] >= 0.7
    assert np.array(last["val_confusion_matrix"]).sum() == sum(1 for line in mosaic_manifest.read_text().splitlines()
                                                                  if ",val," in line)
    assert {"lr", "step", "train_accuracy", "train_balanced_accuracy", "train_macro_f1", "train_auc",
            "val_loss", "time_s"} <= set(last)
    assert result.best_dir == tmp_path / "run" / "best" and result.monitor == "val_balanced_accuracy"
    assert sorted(p.name for p in (tmp_path / "run" / "epoch-006").iterdir()) == [
        "config.json", "model.safetensors", "train_state.json", "train_state.safetensors"]
    # the features were computed once: a second run hits the cache
    cache = tmp_path / "run" / "feature_cache"
    n_files = len(list(cache.glob("*.safetensors")))
    assert n_files == last["step"] // 6 + np.array(last["val_confusion_matrix"]).sum()
    fit(_config(mosaic_manifest, tmp_path / "run2", mode="frozen", epochs=1, feature_cache=str(cache),
                augment={"enabled": False}))
    assert len(list(cache.glob("*.safetensors"))) == n_files


def test_exact_training_lowers_the_loss(small_manifest: Path, tmp_path: Path) -> None:
    """The whole model (backbone included) trained with the two-pass step and augmentation."""
    result = fit(_config(small_manifest, tmp_path / "run", epochs=3))
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0]
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]


def test_resume_continues_the_same_run(small_manifest: Path, tmp_path: Path) -> None:
    """Stopped after epoch 1 and resumed == never stopped, bit for bit (CPU)."""
    model = tiny_model("transformer_xl", context_kwargs={"dropout": 0.1})
    cfg = dict(model=model, epochs=2, slides_per_step=2, mode="xl_detached")
    whole = fit(_config(small_manifest, tmp_path / "whole", **cfg))
    fit(_config(small_manifest, tmp_path / "split", **cfg), stop_after=1)
    assert [r["epoch"] for r in _records(tmp_path / "split")] == [1]
    resumed = fit(_config(small_manifest, tmp_path / "split", **cfg), resume=True)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time_s"} for r in rs]  # noqa: E731
    assert strip(_records(tmp_path / "split")) == strip(_records(tmp_path / "whole"))
    assert strip(resumed.history) == strip(whole.history)
    from safetensors.torch import load_file

    for name in ("model.safetensors", "train_state.safetensors"):  # weights, optimiser moments, RNG states
        a = load_file(str(tmp_path / "whole" / "epoch-002" / name))
        b = load_file(str(tmp_path / "split" / "epoch-002" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # a resumed run refuses a changed config
    from xt_core.train.config import ConfigError

    with pytest.raises(ConfigError, match="lr changed"):
        fit(_config(small_manifest, tmp_path / "split", lr=1e-3, **cfg), resume=True)


def test_checkpoint_reloads_to_identical_predictions(small_manifest: Path, tmp_path: Path) -> None:
    result = fit(_config(small_manifest, tmp_path / "run", epochs=1, mode="frozen"))
    loaded = load_model(tmp_path / "run" / "epoch-001")
    a = evaluate(result.model, small_manifest, split="val", workers=0, device="cpu")
    b = evaluate(loaded, small_manifest, split="val", workers=0, device="cpu")
    assert a["slides"] == b["slides"]  # probabilities equal to the last bit
    assert load_model(tmp_path / "run" / "best").config.classes == CLASSES
    state = {k: v for k, v in result.model.state_dict().items()}
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_segmentation_from_mask_annotations(lc25000, tmp_path: Path) -> None:
    """Segmentation loss only, targets from 2 x 2 px mask PNGs, augmented feature views."""
    manifest = make_segmentation_mosaics(tmp_path / "data", train=18, val=6)
    model = tiny_model()
    model["seg_upsample"] = 1
    result = fit(_config(manifest, tmp_path / "run", mode="frozen", epochs=5, lr=1e-3, frozen_views=2))
    assert result.monitor == "val_seg_accuracy"  # no slide labels: the default monitor falls back
    first, last = result.history[0], result.history[-1]
    assert "train_cls_loss" not in last and last["train_seg_loss"] < first["train_seg_loss"]
    assert last["val_seg_accuracy"] > 0.6  # chance ~1/3
    metrics = evaluate(tmp_path / "run" / "best", manifest, split="val", workers=0, device="cpu")
    assert metrics["segmentation"]["cells"] == 6 * 4 * 4  # 6 slides, 4 regions, 2 x 2 tokens each
    assert metrics["n"] == 0 and metrics["accuracy"] is None  # no slide labels
