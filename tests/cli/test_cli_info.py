"""``xt-slide info`` and ``xt-slide tissue`` run as a user runs them: a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def xt_slide(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "xt_core.cli.main", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_info_json_on_every_real_slide(slides_dir: Path) -> None:
    for path in sorted(slides_dir.iterdir()):
        if path.name == "broken.svs":
            continue
        proc = xt_slide("info", str(path), "--json")
        assert proc.returncode == 0, proc.stderr
        record = json.loads(proc.stdout)  # stdout holds the JSON and nothing else
        with_mpp = path.name not in {"tcga-cr-7395-01a-01-ts1.svs", "kidney-48-5.tif"}
        assert (record["mpp"] is not None) == with_mpp
        assert record["level_count"] == len(record["level_dimensions"]) == len(record["level_downsamples"])
        assert 0.0 <= record["tissue_fraction"] <= 1.0
        assert record["backend"] in {"openslide", "tiffslide", "image"}


def test_info_text_names_everything(cmu_svs: Path) -> None:
    proc = xt_slide("info", str(cmu_svs))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for expected in ("backend:    openslide", "vendor:     aperio", "0.4990 x 0.4990 um/px (header)",
                     "level 0:  2220 x 2967", "label, macro, thumbnail", "tissue:"):
        assert expected in out


def test_info_mpp_override(slides_dir: Path) -> None:
    proc = xt_slide("info", str(slides_dir / "tcga-cr-7395-01a-01-ts1.svs"), "--json", "--mpp", "0.25")
    record = json.loads(proc.stdout)
    assert record["mpp"] == [0.25, 0.25] and record["mpp_source"] == "user"
    proc = xt_slide("info", str(slides_dir / "CMU-1-Small-Region.svs"), "--json", "--mpp", "0.25")
    assert json.loads(proc.stdout)["mpp"] == [0.499, 0.499]
    proc = xt_slide("info", str(slides_dir / "CMU-1-Small-Region.svs"), "--json", "--mpp", "0.25", "--force-mpp")
    assert json.loads(proc.stdout)["mpp"] == [0.25, 0.25]


@pytest.mark.parametrize("make_bad", ["missing", "broken", "directory", "empty", "text"])
def test_bad_input_one_line_exit_2_no_traceback(tmp_path: Path, slides_dir: Path, make_bad: str) -> None:
    if make_bad == "missing":
        path = tmp_path / "missing.svs"
    elif make_bad == "broken":
        path = slides_dir / "broken.svs"
    elif make_bad == "directory":
        path = tmp_path
    elif make_bad == "empty":
        path = tmp_path / "empty.svs"
        path.write_bytes(b"")
    else:
        path = tmp_path / "notes.txt"
        path.write_text("hello")
    proc = xt_slide("info", str(path))
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ")
    assert "Traceback" not in proc.stderr
    debug = xt_slide("info", str(path), "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == lines[0]


def test_usage_errors_exit_2(cmu_svs: Path) -> None:
    assert xt_slide("info").returncode == 2
    assert xt_slide("info", str(cmu_svs), "--mpp", "-3").returncode == 2
    assert xt_slide("nonsense").returncode == 2


def test_missing_mpp_message_suggests_the_flag(slides_dir: Path) -> None:
    proc = xt_slide("bench", "read", str(slides_dir / "tcga-cr-7395-01a-01-ts1.svs"), "--target-mpp", "1.0")
    assert proc.returncode == 2
    assert "--mpp" in proc.stderr and "tcga-cr-7395-01a-01-ts1.svs" in proc.stderr


def test_tissue_writes_an_overlay_png(tmp_path: Path, cmu_svs: Path) -> None:
    out = tmp_path / "sub" / "cmu.png"
    proc = xt_slide("tissue", str(cmu_svs), "--out", str(out), "--size", "400", "--json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["png"] == str(out) and 0.05 < record["tissue_fraction"] < 0.9
    image = np.asarray(Image.open(out))
    assert image.shape == (400, round(2220 * 400 / 2967), 3)
    green_edge = (image[..., 1] == 200) & (image[..., 0] == 0) & (image[..., 2] == 0)
    assert green_edge.sum() > 100  # the outline is drawn
    assert [p.name for p in out.parent.iterdir()] == ["cmu.png"]  # no temporary left over


def test_failed_tissue_leaves_no_file(tmp_path: Path, slides_dir: Path) -> None:
    out = tmp_path / "broken.png"
    proc = xt_slide("tissue", str(slides_dir / "broken.svs"), "--out", str(out))
    assert proc.returncode == 2 and not out.exists() and list(tmp_path.iterdir()) == []


def test_a_reader_that_leaves_early_ends_the_command_quietly(slides_dir: Path) -> None:
    """``xt-slide info --json SLIDE | head -c 0``: no "internal error" line, SIGPIPE's status."""
    proc = subprocess.Popen([sys.executable, "-m", "xt_core.cli.main", "info", str(slides_dir / "CMU-1-Small-Region.svs"),
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    proc.stdout.close()  # the reader is gone before the command prints anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "error" not in err and "Traceback" not in err
