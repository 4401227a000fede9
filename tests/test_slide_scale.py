"""The slide layer at real scale: a 100k x 80k px 40x pyramid opens in bounded memory with every
backend, and one pixel-size rule holds for every backend.

The big slide is generated once per module (:mod:`xt_core.slide.synthetic`) in a temporary
folder. Everything that opens it runs in a child process under an address-space limit
(``ulimit -v``), so a regression that decodes a whole level (24 GB here) fails the test with a
MemoryError instead of exhausting the machine.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from xt_core import SlideError, open_slide
from xt_core.slide import synthetic
from xt_core.slide.mpp import judge_mpp

WIDTH, HEIGHT, MPP = 100_000, 80_000, 0.25  # not multiples of the tile: edges are exercised
ADDRESS_LIMIT = 3 << 30  # bytes of virtual memory a child may map: level 0 alone is 24 GB
PEAK_RSS_LIMIT_MB = 400
BACKENDS = ("auto", "openslide", "tiffslide", "image")

_OPEN_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    from xt_core.slide import open_slide

    path, backend, out = sys.argv[1], sys.argv[2], sys.argv[3]
    x, y, w, h = (int(v) for v in sys.argv[4:8])
    with open_slide(path, backend=backend) as slide:
        info = slide.info()
        np.save(out, slide.read_region((x, y), 0, (w, h)))
    info["torch_imported"] = "torch" in sys.modules
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of a large
    # pytest process would report the parent's peak
    with open("/proc/self/status") as fh:
        hwm_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    info["peak_rss_mb"] = hwm_kb / 1024
    print(json.dumps(info))
    """
)


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_LIMIT, ADDRESS_LIMIT))


def _run_limited(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300,
                          preexec_fn=_limited)


@pytest.fixture(scope="module")
def big_slide(tmp_path_factory, shared_data: Path) -> tuple[Path, tuple[synthetic.Island, ...]]:
    """A 100k x 80k px JPEG pyramid (levels 1/4/16/64) of four needle cores, written by a child
    under the same address-space limit: the writer never holds a level either."""
    path = tmp_path_factory.mktemp("big") / "big.tif"
    tiles = shared_data / "tiles" / "lc25000_lung"
    code = ("import sys; from xt_core.slide.synthetic import write_synthetic_slide; "
            f"write_synthetic_slide(sys.argv[1], {WIDTH}, {HEIGHT}, mpp={MPP}, islands=4, seed=0, tiles=sys.argv[2])")
    proc = _run_limited("-c", code, str(path), str(tiles))
    assert proc.returncode == 0, proc.stderr
    assert path.stat().st_size < 600e6  # glass tiles are one shared few-hundred-byte JPEG
    return path, synthetic.make_islands(WIDTH, HEIGHT, 4, seed=0)


def _island_box(islands, size: int = 768) -> tuple[int, int, int, int]:
    """A level-0 box of ``size`` px around the first island's centre: all tissue."""
    island = islands[0]
    return int(island.cx) - size // 2, int(island.cy) - size // 2, size, size


# ----------------------------------------------------------------------------- opening at scale
@pytest.fixture(scope="module")
def opened(big_slide, tmp_path_factory) -> dict[str, tuple[dict, np.ndarray]]:
    """Each backend opens the big slide (and reads one region) in its own limited child."""
    path, islands = big_slide
    out_dir = tmp_path_factory.mktemp("regions")
    box = [str(v) for v in _island_box(islands)]
    results = {}
    for backend in BACKENDS:
        out = out_dir / f"{backend}.npy"
        proc = _run_limited("-c", _OPEN_CHILD, str(path), backend, str(out), *box)
        assert proc.returncode == 0, f"{backend}: {proc.stderr}"
        results[backend] = (json.loads(proc.stdout), np.load(out))
    return results


@pytest.mark.parametrize("backend", BACKENDS)
def test_opening_a_100k_slide_decodes_nothing_large(opened, backend: str) -> None:
    info, _ = opened[backend]
    assert info["peak_rss_mb"] < PEAK_RSS_LIMIT_MB, info["peak_rss_mb"]
    assert not info["torch_imported"]  # the slide layer stays light


def test_every_backend_agrees_on_size_and_pixel_size(opened) -> None:
    for backend, (info, _) in opened.items():
        assert info["level_dimensions"][0] == [WIDTH, HEIGHT], backend
        assert info["mpp"] == pytest.approx([MPP, MPP]) and info["mpp_source"] == "header", backend
    assert opened["openslide"][0]["level_count"] == opened["tiffslide"][0]["level_count"] == 4
    assert opened["image"][0]["level_count"] == 1


def test_auto_picks_a_slide_library_not_the_image_reader(opened) -> None:
    assert opened["auto"][0]["backend"] in {"openslide", "tiffslide"}


def test_image_reader_reads_lazily_the_same_pixels(opened) -> None:
    """The plain-image reader's region (read in a limited child) equals tiffslide's and
    OpenSlide's: tile-exact, and tissue, not glass."""
    region = opened["image"][1]
    assert region.shape == (768, 768, 3) and region.mean() < 215
    np.testing.assert_array_equal(region, opened["tiffslide"][1])
    np.testing.assert_array_equal(region, opened["openslide"][1])


def test_cli_info_on_the_big_slide(big_slide) -> None:
    path, islands = big_slide
    proc = _run_limited("-m", "xt_core.cli.main", "info", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["level_dimensions"][0] == [WIDTH, HEIGHT] and record["mpp"] == [MPP, MPP]
    expected = sum(i.area for i in islands) / (WIDTH * HEIGHT)
    assert record["tissue_fraction"] == pytest.approx(expected, abs=0.02)  # the cores, not the glass
    text = _run_limited("-m", "xt_core.cli.main", "info", str(path), "--no-tissue")
    assert text.returncode == 0 and f"level 0:  {WIDTH} x {HEIGHT}" in text.stdout


# ----------------------------------------------------------------------------- the synthetic slide
def test_synthetic_slide_has_tissue_where_the_islands_are(big_slide) -> None:
    path, islands = big_slide
    with open_slide(path, backend="tiffslide") as slide:
        w, h = slide.level_dimensions[3]
        low = slide.read_region((0, 0), 3, (w, h))
    tissue = low.mean(axis=2) < 225
    mask = synthetic.island_mask(islands, WIDTH, HEIGHT, 64)  # the writer's factor for level 3
    assert mask.shape == (h, w) and (tissue == mask).mean() > 0.995
    away = ~binary_dilation(mask, np.ones((3, 3)), iterations=16)  # JPEG rings within a 16 px MCU
    assert np.abs(low[away].astype(int) - synthetic.GLASS).max() <= 3  # near-white glass, not 255


def test_synthetic_levels_are_a_downsampled_level_0(tmp_path: Path, shared_data: Path) -> None:
    pool = synthetic.tile_pool(shared_data / "tiles" / "lc25000_lung", 256, count=8)
    path = synthetic.write_synthetic_slide(tmp_path / "s.tif", 4096, 3072, mpp=0.5, levels=(1, 4), tiles=pool,
                                           islands=[synthetic.Island(2048, 1536, 1800, 1200)])
    with open_slide(path) as slide:
        assert slide.level_dimensions == ((4096, 3072), (1024, 768)) and slide.mpp == (0.5, 0.5)
        full = slide.read_region((1024, 1024), 0, (1024, 1024)).astype(float)
        low = slide.read_region((1024, 1024), 1, (256, 256)).astype(float)
    boxed = full.reshape(256, 4, 256, 4, 3).mean(axis=(1, 3))
    assert np.abs(boxed - low).mean() < 8  # JPEG on both sides; same picture


# ----------------------------------------------------------------------------- one pixel-size rule
def _tiled_tiff(path: Path, **resolution) -> Path:
    import tifffile

    pixels = np.full((512, 512, 3), 200, dtype=np.uint8)
    tifffile.imwrite(path, pixels, tile=(256, 256), compression="jpeg", photometric="rgb", **resolution)
    return path


@pytest.mark.parametrize(
    ("name", "resolution", "reason"),
    [
        ("96dpi", dict(resolution=(96, 96), resolutionunit="INCH"), "96 dpi"),
        ("300dpi", dict(resolution=(300, 300), resolutionunit="INCH"), "300 dpi"),
        ("96dpi-in-cm", dict(resolution=(37.795, 37.795), resolutionunit="CENTIMETER"), "96 dpi"),
        ("600pxcm", dict(resolution=(600, 600), resolutionunit="CENTIMETER"), "600 px/cm"),
        ("out-of-range", dict(resolution=(1e4 / 30, 1e4 / 30), resolutionunit="CENTIMETER"), "outside"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_screen_and_implausible_resolutions_are_no_pixel_size(tmp_path: Path, backend: str, name: str,
                                                              resolution: dict, reason: str) -> None:
    path = _tiled_tiff(tmp_path / f"{name}.tif", **resolution)
    with open_slide(path, backend=backend) as slide:
        assert slide.mpp is None
        source = slide.info()["mpp_source"]
        assert source.startswith("none (") and reason in source
    with open_slide(path, backend=backend, mpp=0.5) as slide:  # the user's value is taken instead
        assert slide.mpp == (0.5, 0.5) and slide.mpp_source == "user"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_real_pixel_size_stays(tmp_path: Path, backend: str) -> None:
    for name, resolution in (("cm", dict(resolution=(4e4, 4e4), resolutionunit="CENTIMETER")),
                             ("inch", dict(resolution=(101600, 101600), resolutionunit="INCH"))):
        with open_slide(_tiled_tiff(tmp_path / f"{name}.tif", **resolution), backend=backend) as slide:
            assert slide.mpp == pytest.approx((0.25, 0.25)) and slide.mpp_source == "header"


def test_png_dpi_follows_the_same_rule(tmp_path: Path) -> None:
    pixels = np.full((64, 64, 3), 200, dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "screen.png", dpi=(96, 96))
    Image.fromarray(pixels).save(tmp_path / "scan.png", dpi=(25400 / 0.5, 25400 / 0.5))
    with open_slide(tmp_path / "screen.png") as slide:
        assert slide.mpp is None and "96 dpi" in slide.mpp_source
    with open_slide(tmp_path / "scan.png") as slide:
        assert slide.mpp == pytest.approx((0.5, 0.5), rel=1e-3) and slide.mpp_source == "header"


def test_the_rule_itself() -> None:
    assert judge_mpp((0.2271, 0.2272)).mpp == (0.2271, 0.2272)
    assert judge_mpp(None) == (None, None)
    assert judge_mpp((25400 / 72, 25400 / 72)).rejected.startswith("header says 72 dpi")
    assert "outside" in judge_mpp((0.01, 0.01)).rejected
    assert judge_mpp((0.25, 264.5833)).mpp is None  # one bad axis is enough


def test_cli_info_shows_why_there_is_no_pixel_size(tmp_path: Path) -> None:
    path = _tiled_tiff(tmp_path / "screen.tif", resolution=(96, 96), resolutionunit="INCH")
    proc = subprocess.run([sys.executable, "-m", "xt_core.cli.main", "info", str(path), "--no-tissue"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "mpp:        unknown (pass --mpp): none (header says 96 dpi" in proc.stdout


# ----------------------------------------------------------------------------- plain-image limits
def test_png_over_the_pixel_limit_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    from xt_core.slide import _image

    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((100, 300, 3), dtype=np.uint8)).save(path)
    monkeypatch.setattr(_image, "MAX_DECODED_PIXELS", 20_000)
    with pytest.raises(SlideError) as err:
        open_slide(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "300 x 100 px" in message and "20,000 px" in message
    assert "\n" not in message


def test_tiff_in_oversized_strips_is_refused_not_decoded(slides_dir: Path, monkeypatch) -> None:
    from xt_core.slide import _image

    monkeypatch.setattr(_image, "MAX_DECODED_PIXELS", 1000)
    with pytest.raises(SlideError, match=r"kidney-48-5.tif: .*strips of .* decodes at most 1,000 px"):
        open_slide(slides_dir / "kidney-48-5.tif", backend="image")
