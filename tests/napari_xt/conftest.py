"""Fixtures for the napari tests: a real viewer on pytest-xvfb's X server."""

from __future__ import annotations

import os
import sys

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
