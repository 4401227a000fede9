"""``xt-slide classify`` and ``xt-slide segment`` on the real slides, run as a subprocess with a
small real model saved to disk (efficientnet_lite0 on 64 px chunks of 128 px regions at 2 um/px).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli_info import xt_slide
from test_inference import CLASSES, tiny_config
from test_outputs import assert_valid_feature_collection

import xt_core
from xt_core.outputs.records import slide_stem


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    import torch

    from xt_core.models.checkpoint import save_model
    from xt_core.models.xt import create_model

    torch.manual_seed(0)
    model = create_model(tiny_config("transformer_xl", depth=1, segment_len=16))
    return save_model(model, tmp_path_factory.mktemp("model") / "tiny")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_classify_json_records_and_failed_slides(tmp_path: Path, slides_dir: Path, model_dir: Path) -> None:
    cmu, tcga, broken = (slides_dir / n for n in ("CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs", "broken.svs"))
    out = tmp_path / "out"
    # tcga has no pixel size and no --mpp; broken.svs is a text file: one error line each, the
    # good slide is still done, and the exit code says that some failed
    proc = xt_slide("classify", str(cmu), str(tcga), str(broken), "--model", str(model_dir), "--out", str(out), "--json")
    assert proc.returncode == 2
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 2 and "Traceback" not in proc.stderr
    assert errors[0].startswith(f"error: {tcga}: ") and "--mpp" in errors[0]
    assert errors[1].startswith(f"error: {broken}: ")
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1  # JSON lines and nothing else on stdout
    record = json.loads(lines[0])
    assert [p.name for p in out.iterdir()] == ["CMU-1-Small-Region.json"]
    assert json.loads((out / "CMU-1-Small-Region.json").read_text()) == record
    assert record["slide"] == str(cmu)
    assert record["model"]["name"] == "xt-model"
    assert record["model"]["sha256"] == _sha256(model_dir / "model.safetensors")
    assert record["classes"] == CLASSES
    probs = record["probabilities"]
    assert list(probs) == CLASSES and all(0 <= p <= 1 for p in probs.values())
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert record["prediction"] == max(probs, key=probs.get)
    assert record["mpp"] == [0.499, 0.499] and record["mpp_source"] == "header" and record["target_mpp"] == 2.0
    grid = record["grid"]
    assert grid["region_size"] == 128
    # 2.0 um/px is within 2% of 4 x 0.499: the grid snaps to level 0, 4 x 4 pixels to a target pixel
    assert grid["region_size_px"] == [128 * 4, 128 * 4]
    assert grid["token_size_px"] == [128 * 4 / 2] * 2  # 2 x 2 tokens per region
    assert record["slide_dimensions"] == [2220, 2967]
    assert (grid["rows"], grid["cols"]) == (math.ceil(2967 * 0.499 / 2 / 128), math.ceil(2220 * 0.499 / 2 / 128))
    assert grid["heatmap_shape"] == [grid["rows"] * 2, grid["cols"] * 2]
    assert record["regions"]["total"] == grid["rows"] * grid["cols"]
    assert 0 < record["regions"]["tissue"] < record["regions"]["total"]
    assert {"tissue", "encode", "context", "heads", "outputs", "wall"} <= set(record["timing"])
    assert record["xt_slide_version"] == xt_core.__version__
    assert record["outputs"] == {"json": "CMU-1-Small-Region.json"}


def test_no_model_and_usage_errors(tmp_path: Path, cmu_svs: Path) -> None:
    assert xt_slide("classify").returncode == 2
    assert xt_slide("segment", str(cmu_svs), "--threshold", "2").returncode == 2
    if importlib.util.find_spec("xt_core.models.default") is not None:
        pytest.skip("this install bundles a default model")
    proc = xt_slide("classify", str(cmu_svs), "--out", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: default model: no bundled default model in this install; "
                                   "pass --model PATH (a checkpoint folder)")
    assert list(tmp_path.iterdir()) == []


def test_segment_outputs_line_up_with_the_slide(tmp_path: Path, slides_dir: Path, model_dir: Path) -> None:
    import tiffslide

    from xt_core.slide import open_slide
    from xt_core.tissue import tissue_mask
    from xt_core.tokenize import make_region_grid

    slides = [slides_dir / "CMU-1-Small-Region.svs"]  # the batch tests segment the other slides
    out = tmp_path / "seg"
    proc = xt_slide("segment", *map(str, slides), "--model", str(model_dir), "--out", str(out),
                    "--threshold", "0.3", "--preview-size", "300", "--json")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert len(records) == len(slides)
    for path, record in zip(slides, records):
        name = slide_stem(path)
        assert record["outputs"] == {"json": f"{name}.json", "heatmap": f"{name}.heatmap.ome.tif",
                                     "preview": f"{name}.preview.png", "geojson": f"{name}.geojson"}
        assert json.loads((out / f"{name}.json").read_text()) == record
        w0, h0 = record["slide_dimensions"]
        mpp = record["mpp"]
        rows, cols = record["grid"]["heatmap_shape"]
        token = record["grid"]["token_size_px"]

        # -- heatmap OME-TIFF: size, physical pixel size, and where it lies on the slide
        with tiffslide.TiffSlide(out / record["outputs"]["heatmap"]) as tif:
            assert tif.dimensions == (cols, rows)
            hx, hy = float(tif.properties["tiffslide.mpp-x"]), float(tif.properties["tiffslide.mpp-y"])
            heat = tif.read_region((0, 0), 0, (cols, rows), as_array=True)
        assert (hx, hy) == pytest.approx((token[0] * mpp[0], token[1] * mpp[1]), rel=1e-6)
        region_um = record["grid"]["region_size_px"][0] * mpp[0]
        assert 0 <= cols * hx - w0 * mpp[0] < region_um and 0 <= rows * hy - h0 * mpp[1] < region_um
        assert heat.shape == (rows, cols, 3) and heat.dtype == np.float32
        sums = heat.sum(-1)
        analysed = sums > 0.5
        np.testing.assert_allclose(sums[analysed], 1.0, atol=1e-5)
        assert (sums[~analysed] == 0).all()
        # every region's centre, mapped through the physical pixel sizes, lands on a heatmap
        # pixel that was analysed exactly when the region has tissue
        with open_slide(path) as s:
            grid = make_region_grid(s, target_mpp=2.0, region_size=128, chunk_size=64, tissue=tissue_mask(s))
        keep = set(grid.tissue_indices(0.05).tolist())
        assert len(keep) == record["regions"]["tissue"]
        for region in grid:
            cx, cy = (region.box[0] + region.box[2]) / 2, (region.box[1] + region.box[3]) / 2
            j, i = int(cx * mpp[0] / hx), int(cy * mpp[1] / hy)
            assert analysed[i, j] == (region.index in keep)

        # -- GeoJSON: valid polygons inside the slide, QuPath classes
        collection = json.loads((out / record["outputs"]["geojson"]).read_text())
        assert collection["features"]  # with threshold 0.3 of 3 classes, every analysed token is in one
        assert_valid_feature_collection(collection, (w0, h0), CLASSES)

        # -- PNG preview: thumbnail plus legend
        with open_slide(path) as s:
            thumb_h, thumb_w = s.get_thumbnail(300).shape[:2]
        preview = np.asarray(Image.open(out / record["outputs"]["preview"]))
        assert preview.shape[0] >= thumb_h and preview.shape[1] > thumb_w and preview.shape[2] == 3
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries


def test_python_api_labels_and_target_mpp(tmp_path: Path, slides_dir: Path, model_dir: Path) -> None:
    import tifffile

    from xt_core.models.checkpoint import load_model

    model = load_model(model_dir)
    record = xt_core.segment_slide(slides_dir / "OS-1-detail.ome.tif", model=model, out_dir=tmp_path, labels=True,
                                   target_mpp=4.0, preview_size=200, workers=0)
    assert model.config.target_mpp == 2.0  # the override does not touch the model
    assert record["target_mpp"] == 4.0
    assert record["grid"]["region_size_px"] == pytest.approx([128 * 4.0 / m for m in record["mpp"]])
    with tifffile.TiffFile(tmp_path / record["outputs"]["heatmap"]) as tif:
        labels = tif.series[0].asarray()
        assert tif.series[0].axes == "YX" and labels.dtype == np.uint8
    assert labels.shape == tuple(record["grid"]["heatmap_shape"])
    assert set(np.unique(labels)) <= {0, 1, 2, 3} and labels.max() >= 1
    assert json.loads((tmp_path / "OS-1-detail.json").read_text()) == record
    # classify without out_dir writes nothing and gives the same probabilities
    again = xt_core.classify_slide(slides_dir / "OS-1-detail.ome.tif", model=model, target_mpp=4.0, workers=0)
    assert again["probabilities"] == pytest.approx(record["probabilities"], abs=1e-6)
    assert again["outputs"] == {}
