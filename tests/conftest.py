"""Shared fixtures: the real test data beside the repository, and small real slides made here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Never wait on a model hub from a test (timm retries for ~45 s when offline).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SLIDES = SHARED_DATA / "slides"


def _require(path: Path) -> Path:
    if not path.exists():
        message = f"{path} not found: the real test data lives in ../shared/data beside the repository"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def slides_dir() -> Path:
    return _require(SLIDES)


@pytest.fixture(scope="session")
def cmu_svs(slides_dir: Path) -> Path:
    return slides_dir / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def cmu_pixels(cmu_svs: Path) -> np.ndarray:
    """Level-0 RGB of the CMU sample slide (2967 x 2220), read once with tiffslide."""
    import tiffslide

    with tiffslide.TiffSlide(cmu_svs) as s:
        return np.ascontiguousarray(s.read_region((0, 0), 0, s.dimensions, as_array=True)[..., :3])


def write_pyramid_tiff(
    path: Path,
    image: np.ndarray,
    *,
    levels: int = 3,
    tile: int = 128,
    mpp: float | None = 0.5,
    compression: str | None = "zlib",
) -> Path:
    """A real tiled pyramidal TIFF (SubIFDs, halving per level) with a pixel size, via tifffile.

    Lossless by default so tests can compare pixels exactly.
    """
    import tifffile
    from skimage.transform import downscale_local_mean

    resolution = None
    if mpp is not None:
        resolution = (1e4 / mpp, 1e4 / mpp)
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        options = dict(tile=(tile, tile), compression=compression, photometric="rgb")
        if resolution:
            options.update(resolution=resolution, resolutionunit="CENTIMETER")
        tif.write(image, subifds=levels - 1, **options)
        level = image
        for k in range(1, levels):
            level = downscale_local_mean(level, (2, 2, 1)).round().astype(np.uint8)
            sub = dict(options)
            if resolution:
                sub["resolution"] = (resolution[0] / 2**k, resolution[1] / 2**k)
            tif.write(level, subfiletype=1, **sub)
    return path


@pytest.fixture
def make_pyramid(tmp_path: Path, cmu_pixels: np.ndarray):
    """Factory: a pyramidal TIFF of a (height, width) crop of the real CMU slide.

    The crop starts in the tissue (level-0 x=800, y=600) where it fits, and is padded with
    white where it is larger than the slide.
    """

    def make(height: int, width: int, name: str = "crop.ome.tif", **kw) -> tuple[Path, np.ndarray]:
        y0 = 600 if height + 600 <= cmu_pixels.shape[0] else 0
        x0 = 800 if width + 800 <= cmu_pixels.shape[1] else 0
        crop = cmu_pixels[y0 : y0 + height, x0 : x0 + width]
        image = np.full((height, width, 3), 255, dtype=np.uint8)
        image[: crop.shape[0], : crop.shape[1]] = crop
        return write_pyramid_tiff(tmp_path / name, image, **kw), image

    return make


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A small real model saved as a checkpoint folder: efficientnet_lite0 on 64 px chunks of
    128 px regions at 2 um/px, attention context, three lung classes. Random weights."""
    import torch

    from xt_core.models.checkpoint import save_model
    from xt_core.models.config import XTConfig
    from xt_core.models.xt import create_model

    torch.manual_seed(0)
    config = XTConfig(
        classes=["benign", "adenocarcinoma", "squamous"], region_encoder="efficientnet_lite0", region_size=128,
        chunk_size=64, target_mpp=2.0, token_pool=2, context_encoder="attention", context_dim=32,
        context_kwargs={"depth": 1}, name="tiny-test-model",
    )
    return save_model(create_model(config).eval(), tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_mamba_model_dir(tmp_path_factory) -> Path:
    """A real but tiny checkpoint (1-layer Mamba context), saved once for every batch test."""
    import torch
    from test_inference import tiny_config

    from xt_core.models.checkpoint import save_model
    from xt_core.models.xt import create_model

    torch.manual_seed(0)
    return save_model(create_model(tiny_config("mamba", depth=1)), tmp_path_factory.mktemp("model") / "tiny")
