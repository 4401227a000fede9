"""The bundled default model (xt-lung-lc25000-v1): a small real checkpoint that tells held-out lung tiles apart.

The held-out tiles are the recipe's test split (recipes/default_model), whose names the
checkpoint's config.json carries; mosaics of them are built here, as the recipe builds its
slides, and classified through the same path as ``xt-slide classify``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from xt_core.models.default import DEFAULT_MODEL_DIR, DEFAULT_MODEL_NAME, default_model, default_model_path

TILES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tiles" / "lc25000_lung"
CLASSES = ["benign", "adenocarcinoma", "squamous_cell_carcinoma"]
FOLDERS = {"benign": "lung_n", "adenocarcinoma": "lung_aca", "squamous_cell_carcinoma": "lung_scc"}
MPP = 0.5  # the pixel size the recipe assumes for the 224 px LC25000 tiles


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small CPU convolutions on a shared machine run faster on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    return default_model()


def test_checkpoint_is_shipped_small_and_safe() -> None:
    from safetensors import safe_open

    path = default_model_path()
    assert path == DEFAULT_MODEL_DIR and path.is_dir()
    weights = path / "model.safetensors"
    assert 2e6 < weights.stat().st_size < 15e6  # a few MB: half-precision weights
    assert weights.read_bytes()[:1] != b"\x80"  # not a pickle
    with safe_open(str(weights), framework="pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert "F16" in dtypes and "F32" not in dtypes
    record = json.loads((path / "config.json").read_text(encoding="utf-8"))
    cfg = record["config"]
    assert cfg["name"] == DEFAULT_MODEL_NAME and cfg["classes"] == CLASSES
    assert cfg["region_encoder"] == "efficientnet_lite0" and cfg["classification"] and cfg["segmentation"]
    assert cfg["target_mpp"] == MPP
    held = record["heldout"]
    assert held["split"] == "test" and held["slides"]["n"] >= 30
    assert held["slides"]["accuracy"] > 0.6 and held["unique_tiles"]["accuracy"] > 0.6
    assert len(record["heldout_test_tiles"]) >= 30
    assert "diagnosis" in record["not_for"]


def test_held_out_tiles_are_the_recipes_test_split() -> None:
    """The recipe's split (recipes/default_model/split.json): whole near-duplicate groups per split."""
    split_file = Path(__file__).resolve().parents[1] / "recipes" / "default_model" / "split.json"
    tiles = json.loads(split_file.read_text(encoding="utf-8"))["tiles"]
    record = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text(encoding="utf-8"))
    assert sorted(t for t, v in tiles.items() if v["split"] == "test") == record["heldout_test_tiles"]
    split_of_group: dict[str, str] = {}
    for v in tiles.values():
        assert split_of_group.setdefault(v["group"], v["split"]) == v["split"]  # no group crosses a split
    assert {v["split"] for v in tiles.values()} == {"train", "val", "test"} and len(tiles) == 300


def test_loads_as_float32_model(model) -> None:
    assert model.config.classes == CLASSES and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert len(model.weights_sha256) == 64 and Path(model.checkpoint_path) == DEFAULT_MODEL_DIR
    assert model.tokens_per_side == 2


def _mosaic(tiles: list[np.ndarray], path: Path) -> Path:
    import tifffile

    top, bottom = np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)
    tifffile.imwrite(path, np.concatenate([top, bottom], 0), photometric="rgb", compression="zlib",
                     resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")
    return path


def test_classifies_held_out_tiles_well_above_chance(model, tmp_path: Path) -> None:
    """Six 2x2 mosaics of test-split tiles (never seen in training): slide labels and tile classes."""
    from PIL import Image

    from xt_core.inference import predict_slide
    from xt_core.settings import RunSettings
    from xt_core.slide import open_slide

    if not TILES.is_dir():
        pytest.skip(f"{TILES} not found: the real test data lives in ../shared/data beside the repository")
    held_out = model.checkpoint_record["heldout_test_tiles"]
    pools = {c: sorted(t for t in held_out if t.startswith(FOLDERS[c] + "/")) for c in CLASSES}
    assert all(len(v) >= 8 for v in pools.values())
    rng = np.random.default_rng(0)
    picks = {c: [pools[c][i] for i in rng.permutation(len(pools[c]))] for c in CLASSES}

    def tile(name: str) -> np.ndarray:
        with Image.open(TILES / name) as im:
            return np.asarray(im.convert("RGB"))

    # per class: a slide of four tiles of the class, and (tumours) two tumour tiles among two benign ones
    slides = []
    for c in CLASSES:
        slides.append((c, [c] * 4))
        slides.append((c, [c, "benign", "benign", c] if c != "benign" else ["benign"] * 4))
    correct_slides, tile_true, tile_pred = 0, [], []
    for k, (label, layout) in enumerate(slides):
        names = [picks[c].pop() for c in layout]
        path = _mosaic([tile(n) for n in names], tmp_path / f"s{k}.tif")
        with open_slide(path) as slide:
            result = predict_slide(model, slide, RunSettings(device="cpu", workers=0))
        assert result.probabilities.sum() == pytest.approx(1.0, abs=1e-4)
        correct_slides += result.prediction == label
        heat = result.heatmap  # (4, 4, 3): 2 x 2 tokens per tile
        for i, c in enumerate(layout):
            r, col = divmod(i, 2)
            tile_true.append(CLASSES.index(c))
            tile_pred.append(int(np.nanmean(heat[2 * r : 2 * r + 2, 2 * col : 2 * col + 2], axis=(0, 1)).argmax()))
    tile_acc = float(np.mean(np.array(tile_true) == np.array(tile_pred)))
    assert correct_slides >= 4, f"{correct_slides}/6 slides right (chance: 2)"
    assert tile_acc >= 0.6, f"tile accuracy {tile_acc:.2f} (chance: 0.33)"


def test_sample_slide_classified_with_the_default(cmu_svs: Path) -> None:
    """xt_core.classify_slide with no model: the bundled default, a valid record (skin: the label means nothing)."""
    import xt_core

    record = xt_core.classify_slide(cmu_svs, device="cpu", workers=2)
    assert record["model"]["name"] == DEFAULT_MODEL_NAME and record["classes"] == CLASSES
    probs = record["probabilities"]
    assert set(probs) == set(CLASSES) and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert record["prediction"] in CLASSES and record["target_mpp"] == MPP
    assert record["regions"]["tissue"] > 10
