"""Fixtures for the napari tests: a real viewer on pytest-xvfb's X server, and small real models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


@pytest.fixture
def viewer_factory(request: pytest.FixtureRequest):
    """napari's ``make_napari_viewer``, once there is a display to open it on.

    Without one Qt aborts the whole pytest process when the QApplication is made, so this
    checks first, says why and skips (fails on CI).
    """
    headless_linux = sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )
    if headless_linux and os.environ.get("QT_QPA_PLATFORM", "xcb") == "xcb":
        message = "no X display: install Xvfb (apt package xvfb) so pytest-xvfb can start one"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return request.getfixturevalue("make_napari_viewer")


def _save_small_model(folder: Path, **overrides) -> Path:
    """A real xT model with random weights, small enough to read a slide in about a second:
    efficientnet_lite0 on 64 px regions at 2 um/px (2 x 2 tokens of 64 um), attention context."""
    import torch

    from xt_core.models.checkpoint import save_model
    from xt_core.models.config import XTConfig
    from xt_core.models.xt import create_model

    torch.manual_seed(0)
    config = XTConfig(**{
        "classes": ["benign", "adenocarcinoma", "squamous"], "region_encoder": "efficientnet_lite0",
        "region_size": 64, "chunk_size": 64, "target_mpp": 2.0, "token_pool": 2, "context_encoder": "attention",
        "context_dim": 32, "context_kwargs": {"depth": 1}, "tissue_threshold": 0.1, "name": "small-test-model",
        **overrides,
    })
    return save_model(create_model(config).eval(), folder)


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory) -> Path:
    return _save_small_model(tmp_path_factory.mktemp("models") / "small")


@pytest.fixture(scope="session")
def cls_only_model_dir(tmp_path_factory) -> Path:
    return _save_small_model(tmp_path_factory.mktemp("models") / "cls", segmentation=False, name="cls-only-model")


@pytest.fixture(scope="session")
def seg_only_model_dir(tmp_path_factory) -> Path:
    return _save_small_model(tmp_path_factory.mktemp("models") / "seg", classification=False, name="seg-only-model")
