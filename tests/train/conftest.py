"""Real-tile "slides" for the training tests: 2 x 2 mosaics of LC25000 lung tiles.

LC25000 was made by augmenting (rotating, flipping) 250 originals per class, so near-
duplicates exist among our 100 tiles per class. A held-out split must keep them together:
tiles are grouped by a rotation- and flip-invariant distance between 16 x 16 grey thumbnails
(standardised; duplicates lie below 0.4 mean squared difference, unrelated tiles above 0.6)
and whole groups go to one split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


TILES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tiles" / "lc25000_lung"
CLASSES = ["lung_n", "lung_aca", "lung_scc"]
TILE_PX = 128
DUPLICATE_DISTANCE = 0.5


def _thumb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im.convert("L").resize((16, 16), Image.BILINEAR), dtype=np.float32)
    return (a - a.mean()) / (a.std() + 1e-6)


def group_near_duplicates(files: list[Path]) -> np.ndarray:
    """A group id per file; files closer than DUPLICATE_DISTANCE under some flip/rotation share one."""
    x = np.stack([_thumb(f) for f in files])
    base = x.reshape(len(x), -1)
    dist = np.full((len(x), len(x)), np.inf)
    for k in range(4):
        for flip in (False, True):
            y = np.rot90(x, k, axes=(1, 2))
            y = y[:, :, ::-1] if flip else y
            y = y.reshape(len(x), -1)
            dist = np.minimum(dist, ((base[:, None, :] - y[None]) ** 2).mean(-1))
    parent = list(range(len(x)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(dist < DUPLICATE_DISTANCE, 1))):
        parent[find(i)] = find(j)
    return np.array([find(i) for i in range(len(x))])


def _tile(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((TILE_PX, TILE_PX), Image.BICUBIC))


def make_mosaics(folder: Path, *, per_class: int | None = None, val_every: int = 3, seed: int = 0) -> Path:
    """2 x 2 tile PNG "slides" of one class each, split by near-duplicate group; returns the manifest."""
    from PIL import Image

    from xt_core.train.manifest import write_manifest

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for label in CLASSES:
        files = sorted((TILES / label).glob("*.jpeg"))
        groups = group_near_duplicates(files)
        ids = sorted(set(groups.tolist()))
        rng.shuffle(ids)
        val_groups = set(ids[::val_every])
        for split in ("train", "val"):
            chosen = [f for f, g in zip(files, groups) if (g in val_groups) == (split == "val")]
            rng.shuffle(chosen)
            n = len(chosen) // 4
            if per_class is not None:
                n = min(n, per_class if split == "train" else max(1, per_class // 2))
            for s in range(n):
                tiles = [_tile(f) for f in chosen[4 * s : 4 * s + 4]]
                mosaic = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
                name = f"{split}-{label}-{s:02d}.png"
                Image.fromarray(mosaic).save(folder / name)
                rows.append({"slide": name, "label": label, "split": split})
    return write_manifest(folder / "manifest.csv", rows)


def tiny_model(context: str = "attention", **kw) -> dict:
    """A small real model on 128 px tile regions at the image's own pixels."""
    context_kwargs = {"depth": 1} if context != "transformer_xl" else {"depth": 1, "segment_len": 8}
    context_kwargs.update(kw.pop("context_kwargs", {}))
    return dict(classes=CLASSES, region_encoder="efficientnet_lite0", region_size=TILE_PX, chunk_size=TILE_PX,
                target_mpp=None, token_pool=2, context_encoder=context, context_dim=32,
                context_kwargs=context_kwargs, tissue_threshold=0.0, **kw)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These small convolutions run best on one thread; with the cores shared by other jobs,
    two spinning OpenMP threads make them up to 10x slower. Restored after each test."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def lc25000() -> Path:
    if not TILES.is_dir():
        pytest.skip(f"{TILES} not found: the real test data lives in ../shared/data beside the repository")
    return TILES


@pytest.fixture(scope="session")
def mosaic_manifest(lc25000, tmp_path_factory) -> Path:
    """All LC25000 tiles as 2 x 2 mosaics, train/val split by near-duplicate group."""
    return make_mosaics(tmp_path_factory.mktemp("mosaics"))


@pytest.fixture(scope="session")
def small_manifest(lc25000, tmp_path_factory) -> Path:
    """A few mosaics per class (2 train, 1 val), for quick end-to-end runs."""
    return make_mosaics(tmp_path_factory.mktemp("small-mosaics"), per_class=2)


def cmu_model(context: str, **context_kwargs) -> dict:
    """The tiny real model of tests/test_inference.py: 128 px regions in 64 px chunks at 2 um/px."""
    return dict(classes=CLASSES, region_encoder="efficientnet_lite0", region_size=128, chunk_size=64,
                target_mpp=2.0, token_pool=2, context_encoder=context, context_dim=32,
                context_kwargs=context_kwargs, tissue_threshold=0.05)


def make_segmentation_mosaics(folder: Path, *, train: int = 12, val: int = 6, seed: int = 0) -> Path:
    """2 x 2 mosaics of tiles of mixed classes, each with a 2 x 2 px mask PNG of the tiles' classes.

    Train and val tiles come from different near-duplicate groups. No slide labels: the
    segmentation loss alone.
    """
    from PIL import Image

    from xt_core.train.manifest import write_manifest

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pools: dict[str, list[list[Path]]] = {"train": [], "val": []}
    for label in CLASSES:
        files = sorted((TILES / label).glob("*.jpeg"))
        groups = group_near_duplicates(files)
        val_groups = set(sorted(set(groups.tolist()))[::3])
        for split in pools:
            pools[split].append([f for f, g in zip(files, groups) if (g in val_groups) == (split == "val")])
    rows = []
    for split, count in (("train", train), ("val", val)):
        for s in range(count):
            classes = rng.integers(0, len(CLASSES), 4)
            tiles = [_tile(pools[split][c][rng.integers(len(pools[split][c]))]) for c in classes]
            mosaic = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
            Image.fromarray(mosaic).save(folder / f"{split}-{s:02d}.png")
            Image.fromarray(classes.reshape(2, 2).astype(np.uint8)).save(folder / f"{split}-{s:02d}.mask.png")
            rows.append({"slide": f"{split}-{s:02d}.png", "annotation": f"{split}-{s:02d}.mask.png", "split": split})
    return write_manifest(folder / "manifest.csv", rows)
