"""Process tuning (xt_core.runtime) and the model / memory benchmarks: behaviour, never timing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from xt_core import open_slide, runtime
from xt_bench.memory import memory_benchmark
from xt_bench.model import model_benchmark
from xt_bench.slides import make_bench_slide, pyramid_levels, tile_pool
from xt_core.cli.bench import parse_mode
from xt_core.cli.main import build_parser, main

REQUIRED = ("end_to_end_regions_per_s", "encoder_only_regions_per_s", "ratio", "peak_rss_mb")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A real but small checkpoint: efficientnet_lite0 on 64 px chunks of 128 px regions at 2 um/px."""
    import torch

    from xt_core.models.checkpoint import save_model
    from xt_core.models.config import XTConfig
    from xt_core.models.xt import create_model

    torch.manual_seed(0)
    config = XTConfig(classes=["a", "b", "c"], region_encoder="efficientnet_lite0", region_size=128, chunk_size=64,
                      target_mpp=2.0, token_pool=2, context_encoder="transformer_xl", context_dim=32)
    return save_model(create_model(config), tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def pool() -> np.ndarray:
    return tile_pool(8)


# ------------------------------------------------------------------------- runtime


def test_configure_is_idempotent_and_says_what_it_applied() -> None:
    first = runtime.configure()
    second = runtime.configure()
    assert first == second == runtime.applied()
    assert isinstance(first["allocator"], str) and first["allocator"]
    assert first["torch_threads"] >= 1 and first["omp_wait_policy"]
    if runtime.glibc_version() and runtime.preloaded_allocator() is None:
        assert first["allocator"] == "glibc (tuned)"
        mallopt = first["mallopt"]
        assert mallopt.get("M_MMAP_THRESHOLD", 0) >= 1 << 30 or mallopt.get("M_MMAP_MAX") == 0
        assert mallopt["M_TRIM_THRESHOLD"] >= 1 << 30
        assert runtime.release_memory() is True
    first["allocator"] = "changed"  # a copy: the record itself cannot be edited from outside
    assert runtime.configure()["allocator"] != "changed"


def test_prepare_process_sets_the_openmp_wait_policy_only_before_torch() -> None:
    import os
    import subprocess
    import sys

    code = ("import os, sys; from xt_core import runtime; r = runtime.prepare_process(); "
            "print(r, '|', os.environ.get('OMP_WAIT_POLICY'), '|', runtime.prepare_process() == r)")

    def run(**env: str) -> str:
        base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "XT_NO_TUNING")}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**base, **env})
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert run() == "PASSIVE (set) | PASSIVE | True"
    assert run(OMP_WAIT_POLICY="ACTIVE") == "ACTIVE (user's) | ACTIVE | True"
    assert run(XT_NO_TUNING="1").endswith("| None | True")
    # here torch is already imported: too late, and it says so
    assert "torch imported" in runtime.prepare_process() or "user's" in runtime.prepare_process()


# ------------------------------------------------------------------------- generated slides


def test_generated_pyramid_opens_with_size_levels_and_mpp(tmp_path: Path, pool: np.ndarray) -> None:
    path = make_bench_slide(tmp_path / "g.tif", 2048, pool=pool, mpp=0.5)
    assert pyramid_levels(2048) == 3 and pyramid_levels(32768) == 7
    with open_slide(path) as slide:
        assert slide.dimensions == (2048, 2048)
        assert slide.level_dimensions == ((2048, 2048), (1024, 1024), (512, 512))
        assert slide.mpp == pytest.approx((0.5, 0.5))
        assert slide.level_mpp(2) == pytest.approx((2.0, 2.0))
        corner = slide.read_region((0, 0), 0, (256, 256))
        centre = slide.read_region((768, 768), 0, (512, 512))
        assert corner.min() > 240  # glass
        assert centre.mean() < 230 and centre.std() > 10  # real tissue
        # level 1 is level 0 downsampled (up to JPEG loss)
        fine = slide.read_region((512, 512), 0, (1024, 1024)).astype(np.float32)
        coarse = slide.read_region((512, 512), 1, (512, 512)).astype(np.float32)
        down = fine.reshape(512, 2, 512, 2, 3).mean(axis=(1, 3))
        assert np.abs(down - coarse).mean() < 8
    with pytest.raises(ValueError):
        make_bench_slide(tmp_path / "bad.tif", 1000, pool=pool)


# ------------------------------------------------------------------------- benchmarks


def _check_record(record: dict) -> None:
    for key in REQUIRED:
        assert isinstance(record[key], (int, float)) and record[key] > 0, key
    expected = record["end_to_end_regions_per_s"] / record["encoder_only_regions_per_s"]
    assert math.isclose(record["ratio"], expected, rel_tol=0.01, abs_tol=0.002)
    assert record["regions"] >= 1 and record["batch_size"] >= 1
    assert record["runtime"]["torch_threads"] >= 1 and record["machine"]["cpu_count"] >= 1
    assert record["channels_last"] is True


def test_bench_json_on_a_real_slide(capsys, cmu_svs: Path, tiny_model_dir: Path) -> None:
    code = main(["bench", "--model", str(tiny_model_dir), str(cmu_svs), "--json", "--repeats", "1",
                 "--batch-size", "4", "--workers", "2"])
    assert code == 0
    out = capsys.readouterr().out
    record = json.loads(out)  # one JSON object, nothing else on stdout
    _check_record(record)
    assert record["batch_size"] == 4 and record["workers"] == 2
    assert record["model"].startswith("checkpoint") and record["region_size"] == 128
    assert 1 <= record["regions"] < record["regions_total"]  # background skipped


def test_bench_text_and_a_slide_without_tissue(capsys, tmp_path: Path, pool: np.ndarray, tiny_model_dir: Path) -> None:
    glass = make_bench_slide(tmp_path / "glass.tif", 1024, pool=pool, tissue_fraction=0.0)
    record = model_benchmark(str(glass), str(tiny_model_dir), batch_size=2, workers=1, repeats=1)
    _check_record(record)
    assert record["tissue_threshold"] == 0 and record["regions"] == record["regions_total"]
    assert main(["bench", "model", str(glass), "--model", str(tiny_model_dir), "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    assert "end to end" in text and "encoder only" in text and "ratio" in text and "peak RSS" in text


def test_memory_bench_runs_each_size_in_a_fresh_process(tiny_model_dir: Path) -> None:
    import os

    result = memory_benchmark((512, 1024), model=str(tiny_model_dir), batch_size=2, workers=1)
    assert [r["size_px"] for r in result["runs"]] == [512, 1024]
    small, large = result["runs"]
    assert len({small["pid"], large["pid"], os.getpid()}) == 3  # a new process per size
    assert large["regions_total"] == 4 * small["regions_total"]
    assert large["levels"] == 2 and small["levels"] == 1
    assert all(r["peak_rss_mb"] > 0 and r["regions"] >= 1 for r in result["runs"])
    assert result["peak_rss_ratio"] == pytest.approx(large["peak_rss_mb"] / small["peak_rss_mb"], rel=0.01)


# ------------------------------------------------------------------------- command line


def test_cli_parses_the_three_modes(capsys) -> None:
    assert parse_mode(["slide.svs"]) == ("model", "slide.svs")
    assert parse_mode(["model", "slide.svs"]) == ("model", "slide.svs")
    assert parse_mode(["read", "slide.svs"]) == ("read", "slide.svs")
    assert parse_mode(["memory"]) == ("memory", None)
    assert parse_mode(["./read"]) == ("model", "./read")
    for bad in (["read"], ["memory", "slide.svs"], ["a.svs", "b.svs"], ["model"]):
        with pytest.raises(ValueError):
            parse_mode(bad)
    parser = build_parser()
    args = parser.parse_args(["bench", "memory", "--sizes", "4096,16384,32768", "--target-mpp", "2"])
    assert args.sizes == (4096, 16384, 32768) and args.target_mpp == 2.0
    args = parser.parse_args(["bench", "--model", "m", "s.svs", "--json", "--batch-size", "16", "--workers", "1"])
    assert (args.words, args.model, args.json, args.batch_size, args.workers) == (["s.svs"], "m", True, 16, 1)
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "memory", "--sizes", "1000"])
    assert main(["bench", "memory", "extra.svs"]) == 2
    assert "takes no slide" in capsys.readouterr().err


def test_bench_context_runs_the_context_bench_sections(monkeypatch) -> None:
    """``xt-slide bench context`` is ``bench/run_context_bench.py`` (every section unless named)."""
    import xt_bench.run_context_bench as context_bench

    calls = []
    monkeypatch.setattr(context_bench, "main", lambda argv: calls.append(argv))
    assert parse_mode(["context"]) == ("context", None)
    with pytest.raises(ValueError, match="takes no slide"):
        parse_mode(["context", "slide.svs"])
    assert main(["bench", "context"]) == 0
    assert main(["bench", "context", "--section", "training", "--section", "hyper"]) == 0
    assert calls == [["--only", "scan", "--only", "hyper", "--only", "inference", "--only", "training"],
                     ["--only", "training", "--only", "hyper"]]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "context", "--section", "everything"])


def test_bench_read_still_works(capsys, cmu_svs: Path) -> None:
    assert main(["bench", "read", str(cmu_svs), "--json", "--seconds", "0.05", "--region-size", "1024"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["regions"] >= 1 and record["regions_per_s"]["stream_2_workers"] > 0
