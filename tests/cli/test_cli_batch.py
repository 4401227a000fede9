"""``xt-slide batch`` on the real slides: a bad slide does not stop the batch, a killed batch
resumes to the same outputs as an uninterrupted one, Ctrl-C leaves a valid summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli_info import xt_slide
from test_inference import CLASSES
from test_outputs import assert_valid_feature_collection

from xt_core import batch
from xt_core.errors import XTError
from xt_core.outputs.records import read_summary_csv

SLIDE_NAMES = ["CMU-1-Small-Region", "broken", "OS-1-detail", "kidney-48-5"]


@pytest.fixture(scope="module")
def model_dir(tiny_mamba_model_dir: Path) -> Path:
    return tiny_mamba_model_dir


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, slides_dir: Path) -> Path:
    """Four slides: a good one, broken.svs, another good one, and one with no pixel size whose
    manifest row gives it (by a path relative to the manifest)."""
    folder = tmp_path_factory.mktemp("manifest")
    (folder / "slides").mkdir()
    (folder / "slides" / "kidney-48-5.tif").symlink_to(slides_dir / "kidney-48-5.tif")
    path = folder / "manifest.csv"
    path.write_text(
        "slide,mpp\n"
        f"{slides_dir / 'CMU-1-Small-Region.svs'},\n"
        f"{slides_dir / 'broken.svs'},\n"
        f"{slides_dir / 'OS-1-detail.ome.tif'},\n"
        "slides/kidney-48-5.tif,0.5\n"
    )
    return path


def batch_args(manifest: Path, out: Path, model_dir: Path, *extra: str) -> list[str]:
    # --mpp applies only to slides without a pixel size (none here: the manifest gives kidney's)
    return ["batch", str(manifest), "--out", str(out), "--model", str(model_dir), "--segment", "--mpp", "0.25",
            "--tissue-threshold", "0.01", "--threshold", "0.3", "--preview-size", "200", *extra]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, manifest: Path, model_dir: Path):
    out = tmp_path_factory.mktemp("batch") / "out"
    proc = xt_slide(*batch_args(manifest, out, model_dir))
    return out, proc


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_batch_reports_a_broken_slide_and_finishes_the_others(uninterrupted, manifest: Path, slides_dir: Path) -> None:
    import tiffslide

    out, proc = uninterrupted
    assert proc.returncode == 1, proc.stderr
    broken = slides_dir / "broken.svs"
    assert f"error: {broken}: " in proc.stderr and "Traceback" not in proc.stderr
    assert "4/4" in proc.stderr  # the progress bar counts slides
    assert "3 of 4 slides done, 1 failed" in proc.stdout
    rows = read_summary_csv(out / "summary.csv")
    assert list(rows[0]) == ["slide", "status", "prediction", *[f"p_{c}" for c in CLASSES], "seconds", "error"]
    assert [r["slide"] for r in rows] == [str(slides_dir / "CMU-1-Small-Region.svs"), str(broken),
                                          str(slides_dir / "OS-1-detail.ome.tif"),
                                          str(manifest.parent / "slides" / "kidney-48-5.tif")]
    assert [r["status"] for r in rows] == ["done", "failed", "done", "done"]
    assert rows[1]["error"].startswith("not a readable slide") and rows[1]["prediction"] == ""
    for row in rows[::2] + rows[3:]:
        assert row["prediction"] in CLASSES and row["error"] == "" and float(row["seconds"]) > 0
        assert sum(float(row[f"p_{c}"]) for c in CLASSES) == pytest.approx(1.0, abs=1e-5)
    expected = ["summary.csv"]
    for name in SLIDE_NAMES:
        if name != "broken":
            expected += [f"{name}.json", f"{name}.heatmap.ome.tif", f"{name}.preview.png", f"{name}.geojson"]
    assert _files(out) == sorted(expected)  # nothing for broken.svs, no temporaries
    for name in ("CMU-1-Small-Region", "OS-1-detail", "kidney-48-5"):  # the segmentation of each slide
        record = json.loads((out / f"{name}.json").read_text())
        rows_, cols_ = record["grid"]["heatmap_shape"]
        with tiffslide.TiffSlide(out / f"{name}.heatmap.ome.tif") as tif:
            assert tif.dimensions == (cols_, rows_)
            assert float(tif.properties["tiffslide.mpp-x"]) == pytest.approx(
                record["grid"]["token_size_px"][0] * record["mpp"][0], rel=1e-6)
        collection = json.loads((out / f"{name}.geojson").read_text())
        assert_valid_feature_collection(collection, record["slide_dimensions"], CLASSES)
    kidney = json.loads((out / "kidney-48-5.json").read_text())
    assert kidney["mpp"] == [0.5, 0.5] and kidney["mpp_source"] == "user"  # the manifest's mpp
    cmu = json.loads((out / "CMU-1-Small-Region.json").read_text())
    assert cmu["mpp"] == [0.499, 0.499]  # its own, not --mpp
    assert rows[0]["prediction"] == cmu["prediction"]


def _deterministic(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "timing"}


def test_killed_batch_resumes_to_the_same_outputs(tmp_path: Path, uninterrupted, manifest: Path, model_dir: Path) -> None:
    reference, _ = uninterrupted
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "xt_core.cli.main", *batch_args(manifest, out, model_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    first = out / "CMU-1-Small-Region.json"

    def first_recorded() -> bool:  # the JSON is renamed into place first, the summary rewritten after it
        try:
            return read_summary_csv(out / "summary.csv")[0]["status"] == "done"
        except (OSError, IndexError, KeyError, ValueError):
            return False

    deadline = time.monotonic() + 240
    while not first_recorded() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert first.exists(), "the batch never finished its first slide"
    assert not (out / "kidney-48-5.json").exists(), "killed too late to test anything"
    rows = read_summary_csv(out / "summary.csv")  # the summary of a killed batch is whole
    assert rows[0]["status"] == "done" and rows[-1]["status"] == "pending"

    # whatever temporaries a kill leaves (here made for sure) are cleared by the next run
    (out / ".OS-1-detail.geojson.k1ll3d.geojson").write_text('{"type": "Feat')
    (out / ".summary.csv.k1ll3d.csv").write_text("slide,sta")
    resumed = xt_slide(*batch_args(manifest, out, model_dir, "--resume"))
    assert resumed.returncode == 1, resumed.stderr
    assert "1 already done" in resumed.stdout
    assert _files(out) == _files(reference)  # every output, and no temporaries left by the kill
    for name in _files(reference):
        mine, theirs = out / name, reference / name
        if name.endswith(".json"):
            assert _deterministic(json.loads(mine.read_text())) == _deterministic(json.loads(theirs.read_text())), name
        elif name == "summary.csv":
            strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
            assert strip(read_summary_csv(mine)) == strip(read_summary_csv(theirs))
        else:
            assert mine.read_bytes() == theirs.read_bytes(), name  # OME-TIFF, PNG, GeoJSON: byte for byte


# ----------------------------------------------------------------------------- in-process
def test_inputs_from_folders_globs_and_manifests(tmp_path: Path, manifest: Path, slides_dir: Path) -> None:
    items = batch.collect_inputs(manifest)
    assert [Path(i.path).name for i in items] == ["CMU-1-Small-Region.svs", "broken.svs", "OS-1-detail.ome.tif",
                                                  "kidney-48-5.tif"]
    assert [i.mpp for i in items] == [None, None, None, 0.5]
    assert items[3].path == str(manifest.parent / "slides" / "kidney-48-5.tif")
    folder = [Path(i.path).name for i in batch.collect_inputs(slides_dir)]
    assert "CMU-1-Small-Region.svs" in folder and "broken.svs" in folder and folder == sorted(folder)
    assert [Path(i.path).name for i in batch.collect_inputs(str(slides_dir / "CMU-1-Small-Region*"))] == [
        "CMU-1-Small-Region.svs", "CMU-1-Small-Region_pyramid.ome.tiff", "CMU-1-Small-Region_pyramid_generic.tiff"]
    bad = tmp_path / "bad.csv"
    bad.write_text("file,mpp\na.svs,0.5\n")
    with pytest.raises(XTError, match="bad.csv: row 1: a manifest needs a 'slide'"):
        batch.collect_inputs(bad)
    bad.write_text("path,mpp\na.svs,zero\n")
    with pytest.raises(XTError, match="row 2: mpp 'zero' is not a positive number"):
        batch.collect_inputs(bad)
    with pytest.raises(XTError, match="no files match"):
        batch.collect_inputs(str(tmp_path / "*.svs"))


class _FakeModel:
    class config:  # noqa: N801
        classes = CLASSES
        segmentation = True
        name = "fake"

    weights_sha256 = "0" * 64


def test_ctrl_c_writes_the_summary_and_exits_130(tmp_path: Path, monkeypatch) -> None:
    from xt_core.cli.main import main

    slides = [tmp_path / f"s{i}.svs" for i in range(3)]
    calls, interrupt = [], {"s1.svs"}

    def fake_analyse(path, model, settings, *, segment, out_dir, progress=None):
        calls.append(Path(path).name)
        if Path(path).name in interrupt:
            raise KeyboardInterrupt
        record = {"slide": str(path), "prediction": "benign", "probabilities": dict.fromkeys(CLASSES, 1 / 3),
                  "timing": {"wall": 0.5}, "model": {"sha256": "0" * 64}}
        (out_dir / f"{Path(path).stem}.json").write_text(json.dumps(record))
        return record

    monkeypatch.setattr(batch, "resolve_model", lambda model: _FakeModel())
    monkeypatch.setattr(batch, "analyse_slide", fake_analyse)
    out = tmp_path / "out"
    assert main(["batch", *map(str, slides), "--out", str(out), "--quiet"]) == 130
    assert calls == ["s0.svs", "s1.svs"]
    rows = read_summary_csv(out / "summary.csv")
    assert [r["status"] for r in rows] == ["done", "interrupted", "interrupted"]
    assert _files(out) == ["s0.json", "summary.csv"]
    # from Python: the interruption carries the summary, which says so
    calls.clear()
    with pytest.raises(batch.BatchInterrupted) as stop:
        batch.run_batch([str(s) for s in slides], out, resume=True, progress=False)
    assert calls == ["s1.svs"]
    assert stop.value.summary.interrupted and stop.value.summary.exit_code == 130
    assert [r["status"] for r in stop.value.summary.rows] == ["done", "interrupted", "interrupted"]
    # resuming does the rest only, and ends as if nothing had happened
    calls.clear()
    interrupt.clear()
    summary = batch.run_batch([str(s) for s in slides], out, resume=True, progress=False)
    assert calls == ["s1.svs", "s2.svs"]
    assert summary.exit_code == 0 and summary.resumed == 1 and summary.done == 3
    assert [r["status"] for r in read_summary_csv(out / "summary.csv")] == ["done"] * 3
