"""RunSettings, and engine errors that the CLI rewords with its own flags."""

from __future__ import annotations

import argparse
import pickle

import pytest

from xt_core.cli._options import (
    add_model_options,
    add_segment_options,
    add_slide_options,
    error_line,
    settings_from_args,
)
from xt_core.errors import (
    MissingMppError,
    NoDefaultModelError,
    NoTissueError,
    SlideError,
)
from xt_core.settings import OptionError, RunSettings


def test_defaults_overrides_and_validation() -> None:
    s = RunSettings()
    assert (s.target_mpp, s.tissue_threshold, s.batch_size, s.workers, s.device) == (None, None, None, 2, "auto")
    # the batch is counted in pixels: 8 regions of 224 px, 2 of 512 px, at least 1; a set size wins
    assert [s.regions_per_batch(r) for r in (224, 512, 4096)] == [8, 2, 1]
    assert RunSettings(batch_size=5).regions_per_batch(512) == 5
    t = RunSettings.build(s, mpp=0.25, batch_size=16)
    assert (t.mpp, t.batch_size) == (0.25, 16) and s.mpp is None  # frozen: s is unchanged
    assert t.for_slide(None) is t and t.for_slide(0.5).mpp == 0.5
    assert pickle.loads(pickle.dumps(t)) == t  # sent to Dask workers as it is
    assert t.working_mpp(0.5) == 0.5 and t.replace(target_mpp=1.0).working_mpp(0.5) == 1.0
    assert t.region_threshold(0.1) == 0.1 and t.replace(tissue_threshold=0.0).region_threshold(0.1) == 0.0
    with pytest.raises(TypeError, match="unknown run settings: bogus"):
        RunSettings.build(bogus=1)
    for bad, message in [({"target_mpp": -1}, "target_mpp must be a positive"), ({"tissue_threshold": 2},
                         "tissue_threshold must be a fraction"), ({"threshold": 1.0}, r"threshold must be in \[0, 1\)"),
                         ({"batch_size": 0}, "batch_size must be at least 1"), ({"device": "tpu"}, "device must be"),
                         ({"backend": "pillow"}, "backend must be one of")]:
        with pytest.raises(OptionError, match=message):
            RunSettings(**bad)


def test_the_cli_builds_the_same_settings_from_its_flags() -> None:
    parser = argparse.ArgumentParser()
    add_model_options(parser)
    add_slide_options(parser)
    add_segment_options(parser)
    args = parser.parse_args(["--mpp", "0.25", "--batch-size", "4", "--tissue-threshold", "0.2", "--labels",
                              "--backend", "tiffslide"])
    assert settings_from_args(args) == RunSettings(mpp=0.25, batch_size=4, tissue_threshold=0.2, labels=True,
                                                   backend="tiffslide")
    info = argparse.ArgumentParser()
    add_slide_options(info)  # a command without model options keeps the other defaults
    assert settings_from_args(info.parse_args([])) == RunSettings()


def test_engine_errors_speak_the_engine_and_the_cli_adds_its_flag() -> None:
    missing = MissingMppError("a.svs")
    assert "--" not in str(missing) and str(missing).startswith("a.svs: the slide has no pixel size")
    assert "give it as mpp" in str(missing)
    assert error_line(missing) == ("error: a.svs: the slide has no pixel size (microns per pixel) in its metadata; "
                                   "pass --mpp with the scanner's value, e.g. 0.25 for 40x or 0.5 for 20x")
    assert error_line(NoTissueError("b.tif", 0.1)).endswith("; lower --tissue-threshold to analyse it anyway")
    assert "--" not in str(NoTissueError("b.tif", 0.1))
    assert error_line(NoDefaultModelError()) == ("error: default model: no bundled default model in this install; "
                                                 "pass --model PATH (a checkpoint folder)")
    assert error_line(SlideError("c.svs", "corrupt")) == "error: c.svs: corrupt"
    assert error_line(ValueError("boom")) == "error: internal error (ValueError): boom"
