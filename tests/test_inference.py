"""Streaming slide inference: equal to a whole pass, independent of batching and threads."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from xt_core import ModelFileError, SlideError, open_slide
from xt_core.inference import predict_slide
from xt_core.settings import RunSettings
from xt_core.models.checkpoint import load_model, save_model
from xt_core.models.config import XTConfig
from xt_core.models.xt import create_model
from xt_core.stream import iter_region_batches
from xt_core.tissue import tissue_mask
from xt_core.tokenize import make_region_grid

CLASSES = ["benign", "adenocarcinoma", "squamous"]


def tiny_config(context: str, **context_kwargs) -> XTConfig:
    """A real but small model: efficientnet_lite0 on 64 px chunks of 128 px regions at 2 um/px."""
    return XTConfig(
        classes=CLASSES, region_encoder="efficientnet_lite0", region_size=128, chunk_size=64, target_mpp=2.0,
        token_pool=2, context_encoder=context, context_dim=32, context_kwargs=context_kwargs, tissue_threshold=0.05,
    )


def whole_pass(model, slide) -> tuple[np.ndarray, np.ndarray]:
    """Reference: every tissue region in one batch, one forward pass over the whole sequence.

    Returns the slide probabilities and the heatmap laid out here, independently: region
    (r, c) owns the t x t block at (r * t, c * t), its tokens row-major.
    """
    cfg = model.config
    grid = make_region_grid(slide, target_mpp=cfg.target_mpp, region_size=cfg.region_size,
                            chunk_size=cfg.chunk_size, tissue=tissue_mask(slide))
    idx = grid.tissue_indices(cfg.tissue_threshold)
    batch = next(iter_region_batches(slide, grid, batch_size=len(idx), workers=0, indices=idx, as_tensor=True))
    with torch.inference_mode():
        out = model(batch.images, torch.from_numpy(batch.rows), torch.from_numpy(batch.cols))
    seg = torch.softmax(out["seg_logits"], -1)[0, :, 0, 0].numpy()  # (L, C), upsample 1
    t = model.tokens_per_side
    heat = np.full((grid.rows * t, grid.cols * t, seg.shape[-1]), np.nan, dtype=np.float32)
    for k, (r, c) in enumerate(zip(batch.rows, batch.cols)):
        heat[r * t : (r + 1) * t, c * t : (c + 1) * t] = seg[k * t * t : (k + 1) * t * t].reshape(t, t, -1)
    return torch.softmax(out["logits"], -1)[0].numpy(), heat


@pytest.fixture(scope="module")
def slide(slides_dir: Path):
    with open_slide(slides_dir / "CMU-1-Small-Region.svs") as s:
        yield s


def test_mamba_streamed_equals_whole_pass(slide) -> None:
    torch.manual_seed(0)
    streamed_model = create_model(tiny_config("mamba", depth=2, segment_len=8)).eval()
    result = predict_slide(streamed_model, slide, RunSettings(batch_size=3, workers=2))
    whole_model = create_model(tiny_config("mamba", depth=2, segment_len=100_000)).eval()
    whole_model.load_state_dict(streamed_model.state_dict())
    probs, seg = whole_pass(whole_model, slide)
    np.testing.assert_allclose(result.probabilities, probs, atol=1e-4)
    np.testing.assert_allclose(result.heatmap, seg, atol=1e-4)  # NaN where skipped, in both


def test_transformer_xl_streamed_equals_whole_pass_when_memory_covers_it(slide) -> None:
    """Causal XL in segments of 8 tokens, memory covering the sequence, equals one segment."""
    torch.manual_seed(0)
    streamed = create_model(tiny_config("transformer_xl", depth=2, segment_len=8, mem_len=10_000, causal=True)).eval()
    result = predict_slide(streamed, slide, RunSettings(batch_size=4, workers=2))
    whole = create_model(tiny_config("transformer_xl", depth=2, segment_len=10_000, causal=True)).eval()
    whole.load_state_dict(streamed.state_dict())
    probs, seg = whole_pass(whole, slide)
    np.testing.assert_allclose(result.probabilities, probs, atol=1e-4)
    np.testing.assert_allclose(result.heatmap, seg, atol=1e-4)  # NaN where skipped, in both
    # and with memory shorter than the sequence the answer really changes
    short = create_model(tiny_config("transformer_xl", depth=2, segment_len=8, mem_len=0, causal=True)).eval()
    short.load_state_dict(streamed.state_dict())
    assert np.abs(predict_slide(short, slide).probabilities - result.probabilities).max() > 1e-4


def test_batch_size_and_workers_do_not_change_results(slide) -> None:
    torch.manual_seed(1)
    model = create_model(tiny_config("attention", depth=1)).eval()
    a = predict_slide(model, slide, RunSettings(batch_size=1, workers=0))
    b = predict_slide(model, slide, RunSettings(batch_size=16, workers=2))
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
    np.testing.assert_allclose(np.nan_to_num(a.heatmap, nan=-1), np.nan_to_num(b.heatmap, nan=-1), atol=1e-5)


def test_result_geometry_and_skipped_regions(slide) -> None:
    model = create_model(tiny_config("none")).eval()
    result = predict_slide(model, slide, RunSettings(batch_size=8))
    grid = result.grid
    t = model.tokens_per_side
    assert result.heatmap.shape == (grid.rows * t, grid.cols * t, 3)
    assert result.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert result.prediction in CLASSES
    assert 0 < result.regions_tissue < result.regions_total == grid.n_regions
    skipped = np.isnan(result.heatmap[..., 0]).reshape(grid.rows, t, grid.cols, t).all(axis=(1, 3))
    keep = grid.tissue_indices(model.config.tissue_threshold)
    assert sorted(np.flatnonzero(~skipped.reshape(-1))) == sorted(keep)
    # a heatmap pixel covers a token: region level-0 size / tokens per side
    assert result.token_size == pytest.approx((grid.region_size_level0[0] / t, grid.region_size_level0[1] / t))
    record = result.record()
    assert record["regions"] == {"total": grid.n_regions, "tissue": len(keep)}
    assert set(record["timing"]) >= {"tissue", "encode", "context", "heads", "total"}


def test_any_slide_shape(make_pyramid) -> None:
    path, _ = make_pyramid(333, 1001, levels=2, mpp=1.0)
    model = create_model(tiny_config("mamba", depth=1)).eval()
    with open_slide(path) as s:
        result = predict_slide(model, s, RunSettings(tissue_threshold=0.0))
    assert result.grid.rows == 2 and result.grid.cols == 4  # 167 x 501 target px in 128 px regions
    assert not np.isnan(result.heatmap).any()


def test_no_tissue_is_a_clear_error(tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.full((300, 300, 3), 250, np.uint8)).save(tmp_path / "glass.png")
    model = create_model(tiny_config("none"))
    cfg = model.config
    cfg.target_mpp = None
    with open_slide(tmp_path / "glass.png") as s, pytest.raises(SlideError, match="glass.png: no region has tissue"):
        predict_slide(model, s)


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path, slide) -> None:
    torch.manual_seed(2)
    model = create_model(tiny_config("transformer_xl", depth=1, segment_len=16)).eval()
    folder = save_model(model, tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model(folder / "model.safetensors")
    assert loaded.config == model.config and len(loaded.weights_sha256) == 64
    a, b = predict_slide(model, slide), predict_slide(loaded, slide)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    np.testing.assert_array_equal(np.nan_to_num(a.heatmap), np.nan_to_num(b.heatmap))


class _CreatesFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("name", ["model.pt", "weights.pth", "model.safetensors"])
def test_a_pickle_is_never_unpickled(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / name).write_bytes(pickle.dumps(_CreatesFile(marker), protocol=4))
    (folder / "config.json").write_text('{"config": {"classes": ["a"]}}')
    with pytest.raises(ModelFileError, match="pickle"):
        load_model(folder / name)
    assert not marker.exists()
    # make sure the payload really would have created it
    pickle.loads((folder / name).read_bytes())
    assert marker.exists()


def test_wrong_model_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no such file"):
        load_model(tmp_path / "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFileError, match="lacks model.safetensors"):
        load_model(empty)
    model = create_model(tiny_config("none"))
    folder = save_model(model, tmp_path / "ck")
    config = (folder / "config.json").read_text()
    (folder / "config.json").write_text(config.replace('"context_dim": 32', '"context_dim": 48'))
    with pytest.raises(ModelFileError, match="model.safetensors: weights do not match|shape"):
        load_model(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="config.json: not a readable JSON config"):
        load_model(folder)
    (folder / "config.json").write_text(config.replace('"pooling"', '"poolling"'))
    with pytest.raises(ModelFileError, match="unknown config keys: poolling"):
        load_model(folder)


def test_half_precision_checkpoint_loads_as_float32(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = create_model(tiny_config("none")).eval()
    folder = save_model(model, tmp_path / "half", dtype=torch.float16)
    full = save_model(model, tmp_path / "full")
    assert (folder / "model.safetensors").stat().st_size < 0.6 * (full / "model.safetensors").stat().st_size
    loaded = load_model(folder)
    for key, value in model.state_dict().items():
        got = loaded.state_dict()[key]
        assert got.dtype == value.dtype
        if value.is_floating_point():
            torch.testing.assert_close(got, value.half().to(value.dtype))


def test_saving_is_deterministic(tmp_path: Path) -> None:
    import hashlib

    model = create_model(tiny_config("none"))
    digests = set()
    for k in range(4):
        folder = save_model(model, tmp_path / f"c{k}")
        digests.add(hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1
