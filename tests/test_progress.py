"""The per-slide region progress bar: shown on a terminal, silent elsewhere."""

from __future__ import annotations

import io

from xt_core.progress import RegionProgress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal_counts_regions() -> None:
    stream = _Terminal()
    bar = RegionProgress("slide.svs", stream=stream)
    for done in (8, 16, 20):
        bar.update(done, 20)
    assert (bar._bar.n, bar._bar.total) == (20, 20)
    bar.close()
    text = stream.getvalue()
    assert "slide.svs" in text and "/20" in text and "region/s" in text


def test_no_bar_when_not_a_terminal_or_quiet() -> None:
    piped = io.StringIO()
    bar = RegionProgress("slide.svs", stream=piped)
    bar.update(5, 10)
    bar.close()
    assert piped.getvalue() == ""
    quiet = _Terminal()
    bar = RegionProgress("slide.svs", stream=quiet, enabled=False)
    bar.update(5, 10)
    assert quiet.getvalue() == ""


def test_a_batch_shows_it_even_when_piped() -> None:
    piped = io.StringIO()
    bar = RegionProgress("regions", stream=piped, terminal_only=False, position=1)
    bar.update(3, 6)
    bar.close()
    assert "regions" in piped.getvalue() and "/6" in piped.getvalue()
