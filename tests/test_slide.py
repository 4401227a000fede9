"""The slide layer on every real slide in ../shared/data/slides, and on small slides made here."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xt_core import MissingMppError, SlideError, open_slide

# What each real slide is (checked by hand against OpenSlide and tiffslide): the backend
# that sees the full pyramid, level-0 size, level count, mpp (None: not in the header).
EXPECTED = {
    "CMU-1-Small-Region.svs": ("openslide", (2220, 2967), 1, 0.499, "aperio"),
    "CMU-1-Small-Region_pyramid_generic.tiff": ("tiffslide", (2220, 2967), 4, 0.499, None),
    "CMU-1-Small-Region_pyramid.ome.tiff": ("tiffslide", (2220, 2967), 4, 0.499, None),
    "OS-1-detail.ome.tif": ("tiffslide", (1101, 1101), 1, 0.2271, None),
    "kidney-48-5.tif": ("tiffslide", (1493, 901), 1, None, None),
    "tcga-cr-7395-01a-01-ts1.svs": ("tiffslide", (4443, 3567), 2, None, "aperio"),
    "test3-DAPI-2.ndpi": ("openslide", (3968, 4864), 7, 0.2282, "hamamatsu"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_slides_open_with_right_geometry(slides_dir: Path, name: str) -> None:
    backend, dims, levels, mpp, vendor = EXPECTED[name]
    with open_slide(slides_dir / name) as slide:
        assert slide.backend == backend
        assert slide.dimensions == dims
        assert slide.level_count == levels
        assert slide.vendor == vendor
        if mpp is None:
            assert slide.mpp is None
        else:
            assert slide.mpp == pytest.approx((mpp, mpp), abs=5e-4)
            assert slide.mpp_source == "header"
        # downsamples grow and the level sizes follow them
        ds = slide.level_downsamples
        assert ds[0] == 1.0 and all(b > a for a, b in zip(ds, ds[1:]))
        for (w, h), d in zip(slide.level_dimensions, ds):
            assert w == pytest.approx(dims[0] / d, abs=2) and h == pytest.approx(dims[1] / d, abs=2)
        region = slide.read_region((10, 20), slide.level_count - 1, (33, 17))
        assert region.shape == (17, 33, 3) and region.dtype == np.uint8


def test_svs_metadata_and_associated_images(cmu_svs: Path) -> None:
    with open_slide(cmu_svs) as slide:
        assert slide.objective_power == 20
        assert set(slide.associated_images) == {"label", "macro", "thumbnail"}
        label = slide.read_associated("label")
        assert label.ndim == 3 and label.shape[2] == 3 and label.dtype == np.uint8
        assert slide.properties["openslide.vendor"] == "aperio"
        with pytest.raises(KeyError, match="no associated image 'nope'"):
            slide.read_associated("nope")
        info = slide.info()
        assert info["level_dimensions"] == [[2220, 2967]] and info["backend"] == "openslide"


@pytest.mark.parametrize(
    "name",
    ["CMU-1-Small-Region.svs", "CMU-1-Small-Region_pyramid_generic.tiff", "tcga-cr-7395-01a-01-ts1.svs",
     "test3-DAPI-2.ndpi", "CMU-1-Small-Region_pyramid.ome.tiff"],
)
def test_backends_agree_on_pixels(slides_dir: Path, name: str) -> None:
    """Where both libraries read a slide, level 0 is identical, and so is every level whose
    downsample is a whole number. (At fractional downsamples OpenSlide renders with a
    sub-pixel shift of its own, so only the overall picture agrees there.)"""
    with open_slide(slides_dir / name, backend="openslide") as a, open_slide(slides_dir / name, backend="tiffslide") as b:
        for level in range(min(a.level_count, b.level_count)):
            loc, size = (301, 457), (173, 129)
            pa, pb = a.read_region(loc, level, size), b.read_region(loc, level, size)
            ds = a.level_downsamples[level]
            if ds == int(ds):
                np.testing.assert_array_equal(pa, pb)
            else:
                assert np.abs(pa.astype(int) - pb.astype(int)).mean() < 3


def test_auto_prefers_the_backend_that_sees_the_pyramid(slides_dir: Path) -> None:
    with open_slide(slides_dir / "CMU-1-Small-Region_pyramid.ome.tiff", backend="openslide") as s:
        assert s.level_count == 1  # OpenSlide misses the SubIFD pyramid ...
    with open_slide(slides_dir / "CMU-1-Small-Region_pyramid.ome.tiff") as s:
        assert s.backend == "tiffslide" and s.level_count == 4  # ... so auto takes tiffslide
    with open_slide(slides_dir / "test3-DAPI-2.ndpi", backend="tiffslide") as s:
        assert s.level_count == 4
    with open_slide(slides_dir / "test3-DAPI-2.ndpi") as s:
        assert s.backend == "openslide" and s.level_count == 7


@pytest.mark.parametrize("direct_tiles", ["0", "1"])
def test_auto_prefers_exact_pixels_on_a_tie(slides_dir: Path, monkeypatch, direct_tiles: str) -> None:
    """The generic pyramid's downsamples are fractional (2.0003...): OpenSlide shifts a tile
    read by a sub-pixel, so it no longer equals the same pixels inside a larger read. Read
    directly from the TIFF's tiles (xt_core.slide.tiles), every backend is exact."""
    monkeypatch.setenv("XT_DIRECT_TILES", direct_tiles)
    path = slides_dir / "CMU-1-Small-Region_pyramid_generic.tiff"
    for backend, exact in (("openslide", direct_tiles == "1"), ("auto", True)):
        with open_slide(path, backend=backend) as slide:
            whole = slide.read_region((0, 0), 1, (600, 600))
            tile = slide.read_region((round(257 * slide.level_downsamples[1]), round(301 * slide.level_downsamples[1])), 1, (100, 100))
            assert np.array_equal(tile, whole[301:401, 257:357]) == exact


def test_auto_falls_back_when_openslide_fails(slides_dir: Path) -> None:
    with pytest.raises(SlideError, match="OS-1-detail.ome.tif: not a readable slide"):
        open_slide(slides_dir / "OS-1-detail.ome.tif", backend="openslide")
    with open_slide(slides_dir / "OS-1-detail.ome.tif") as s:
        assert s.backend == "tiffslide"
        assert s.read_region((0, 0), 0, (64, 64)).mean() < 250  # real tissue pixels


# ----------------------------------------------------------------------------- bad input
def _bad_inputs(tmp_path: Path, slides_dir: Path) -> dict[str, tuple[Path, str]]:
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    text = tmp_path / "notes.txt"
    text.write_text("not a slide\n")
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes((slides_dir / "CMU-1-Small-Region.svs").read_bytes()[:600_000])
    binary = tmp_path / "random.ndpi"
    binary.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    return {
        "missing": (tmp_path / "nope.svs", "no such file"),
        "directory": (tmp_path, "is a directory"),
        "zero-byte": (empty, "empty file"),
        "text named .svs": (slides_dir / "broken.svs", "not a readable slide"),
        "unsupported": (text, "not a readable slide"),
        "random bytes": (binary, "not a readable slide"),
        "truncated": (truncated, "not a readable slide"),
    }


@pytest.mark.parametrize("case", ["missing", "directory", "zero-byte", "text named .svs", "unsupported",
                                  "random bytes", "truncated"])
def test_bad_input_is_one_clear_error(tmp_path: Path, slides_dir: Path, case: str) -> None:
    path, reason = _bad_inputs(tmp_path, slides_dir)[case]
    with pytest.raises(SlideError) as info:
        open_slide(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and reason in message
    assert "\n" not in message and info.value.path == str(path)


def test_unknown_backend_name_is_rejected(cmu_svs: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend 'bogus'"):
        open_slide(cmu_svs, backend="bogus")


# ----------------------------------------------------------------------------- mpp
def test_slide_without_mpp_opens_and_explains(slides_dir: Path) -> None:
    path = slides_dir / "tcga-cr-7395-01a-01-ts1.svs"
    with open_slide(path) as slide:
        assert slide.mpp is None
        with pytest.raises(MissingMppError, match=r"no pixel size .*; give it as mpp"):
            slide.read_region_at_mpp((0, 0), (64, 64), 1.0)
    with open_slide(path, mpp=0.25) as slide:
        assert slide.mpp == (0.25, 0.25) and slide.mpp_source == "user"
        assert slide.level_mpp(1) == pytest.approx((0.25 * 2.0005, 0.25 * 2.0005), rel=1e-3)


def test_header_mpp_wins_unless_forced(cmu_svs: Path) -> None:
    with open_slide(cmu_svs, mpp=0.25) as slide:
        assert slide.mpp == (0.499, 0.499) and slide.mpp_source == "header"
    with open_slide(cmu_svs, mpp=0.25, force_mpp=True) as slide:
        assert slide.mpp == (0.25, 0.25) and slide.mpp_source == "user"
    with pytest.raises(ValueError, match="positive"):
        open_slide(cmu_svs, mpp=-1, force_mpp=True)


# ----------------------------------------------------------------------------- reading
def test_reads_outside_the_slide_are_white(cmu_svs: Path, cmu_pixels: np.ndarray) -> None:
    with open_slide(cmu_svs) as slide:
        w, h = slide.dimensions
        corner = slide.read_region((w - 10, h - 20), 0, (30, 50))
        np.testing.assert_array_equal(corner[:20, :10], cmu_pixels[h - 20 :, w - 10 :])
        assert (corner[20:] == 255).all() and (corner[:, 10:] == 255).all()
        before = slide.read_region((-5, -7), 0, (20, 20))
        assert (before[:7] == 255).all() and (before[:, :5] == 255).all()
        np.testing.assert_array_equal(before[7:, 5:], cmu_pixels[:13, :15])
        assert (slide.read_region((w + 100, 0), 0, (8, 8)) == 255).all()


def test_read_at_mpp_uses_a_matching_level_directly(slides_dir: Path) -> None:
    with open_slide(slides_dir / "CMU-1-Small-Region_pyramid_generic.tiff") as slide:
        mpp1 = slide.level_mpp(1)[0]
        direct = slide.read_region((400, 600), 1, (128, 96))
        at_mpp = slide.read_region_at_mpp((400, 600), (128, 96), mpp1)
        np.testing.assert_array_equal(direct, at_mpp)


def test_read_at_mpp_resamples_between_levels(make_pyramid) -> None:
    """1.5x the native pixel size lies between levels 0 and 1: the pixels are resampled from
    level 0 (not snapped to level 1) and agree with an independent resize of the same area."""
    path, image = make_pyramid(512, 640, levels=2)
    with open_slide(path) as slide:
        out = slide.read_region_at_mpp((96, 48), (200, 150), 0.75)
    assert out.shape == (150, 200, 3)
    ref = np.asarray(Image.fromarray(image).resize((200, 150), Image.Resampling.LANCZOS, box=(96, 48, 396, 273)))
    diff = np.abs(out.astype(int) - ref.astype(int))
    assert diff[4:-4, 4:-4].max() <= 2  # interior identical up to rounding; edges see real neighbours
    # and it is not simply the half-resolution level
    with open_slide(path) as slide:
        snapped = slide.read_region((96, 48), 1, (200, 150))
    assert np.abs(out.astype(int) - snapped.astype(int)).mean() > 5


def test_read_at_mpp_upsamples_too(make_pyramid) -> None:
    path, image = make_pyramid(256, 256, levels=1)
    with open_slide(path) as slide:
        out = slide.read_region_at_mpp((0, 0), (100, 100), 0.25)  # finer than the scan
    assert out.shape == (100, 100, 3)
    assert np.abs(out[::2, ::2].astype(int).mean() - image[:50, :50].mean()) < 3


def test_thumbnail_keeps_aspect_and_content(cmu_svs: Path, cmu_pixels: np.ndarray) -> None:
    with open_slide(cmu_svs) as slide:
        thumb = slide.get_thumbnail(300)
    assert thumb.shape == (300, round(2220 * 300 / 2967), 3)
    small = np.asarray(Image.fromarray(cmu_pixels).resize((thumb.shape[1], 300), Image.Resampling.BOX))
    assert np.abs(thumb.astype(int) - small.astype(int)).mean() < 4


def test_concurrent_reads_match_sequential(slides_dir: Path) -> None:
    locations = [(x, y) for x in range(0, 2000, 400) for y in range(0, 2800, 560)]
    for backend in ("tiffslide", "openslide"):
        with open_slide(slides_dir / "CMU-1-Small-Region_pyramid_generic.tiff", backend=backend) as slide:
            expected = [slide.read_region(loc, 1, (96, 96)) for loc in locations]
            barrier = threading.Barrier(4)

            def read(i: int) -> np.ndarray:
                if i < 4:
                    barrier.wait()
                return slide.read_region(locations[i], 1, (96, 96))

            with ThreadPoolExecutor(4) as pool:
                got = list(pool.map(read, range(len(locations))))
            for a, b in zip(expected, got):
                np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- plain images
def test_plain_png_jpeg_and_untiled_tiff(tmp_path: Path, cmu_pixels: np.ndarray) -> None:
    import tifffile

    crop = np.ascontiguousarray(cmu_pixels[500:800, 300:700])
    Image.fromarray(crop).save(tmp_path / "crop.png")
    Image.fromarray(crop).save(tmp_path / "crop.jpg", quality=95)
    tifffile.imwrite(tmp_path / "crop.tif", crop, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "dpi.tif", crop, resolution=(72, 72), resolutionunit="INCH")

    with open_slide(tmp_path / "crop.png") as s:
        assert s.backend == "image" and s.dimensions == (400, 300) and s.mpp is None
        np.testing.assert_array_equal(s.read_region((0, 0), 0, (400, 300)), crop)
    with open_slide(tmp_path / "crop.jpg") as s:
        assert np.abs(s.read_region((0, 0), 0, (400, 300)).astype(int) - crop).mean() < 3
    with open_slide(tmp_path / "crop.tif", backend="image") as s:
        assert s.mpp == pytest.approx((0.5, 0.5))
        np.testing.assert_array_equal(s.read_region((10, 10), 0, (50, 40)), crop[10:50, 10:60])
    with open_slide(tmp_path / "dpi.tif", backend="image") as s:
        assert s.mpp is None  # 72 dpi is a screen setting, not a microscope's pixel size
        assert s.mpp_source == "none (header says 72 dpi = 352.8 um/px, a screen/print default)"


def test_auto_uses_the_image_reader_only_when_both_libraries_fail(tmp_path: Path, cmu_pixels: np.ndarray,
                                                                  monkeypatch) -> None:
    """The plain-image reader is a last resort for TIFFs: a file a slide library opens is never
    also opened (let alone decoded) by it."""
    import tifffile

    from xt_core.slide._image import ImageBackend
    from xt_core.slide._openslide import OpenSlideBackend
    from xt_core.slide._tiffslide import TiffSlideBackend

    crop = np.ascontiguousarray(cmu_pixels[500:800, 300:700])
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, crop, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    opened_by_image = []
    image_init = ImageBackend.__init__

    def spy(self, p):
        opened_by_image.append(p)
        image_init(self, p)

    monkeypatch.setattr(ImageBackend, "__init__", spy)
    with open_slide(path) as s:
        assert s.backend == "tiffslide"
    assert opened_by_image == []

    def fail(self, p):
        raise RuntimeError("unsupported")

    monkeypatch.setattr(OpenSlideBackend, "__init__", fail)
    monkeypatch.setattr(TiffSlideBackend, "__init__", fail)
    with open_slide(path) as s:
        assert s.backend == "image" and s.mpp == pytest.approx((0.5, 0.5))
        np.testing.assert_array_equal(s.read_region((0, 0), 0, (400, 300)), crop)


def test_a_slide_made_with_tifffile_reads_back_exactly(make_pyramid) -> None:
    path, image = make_pyramid(700, 1000, levels=3)
    with open_slide(path) as slide:
        assert slide.level_dimensions == ((1000, 700), (500, 350), (250, 175))
        assert slide.mpp == pytest.approx((0.5, 0.5))
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, (1000, 700)), image)


def test_closed_slide_says_so(cmu_svs: Path) -> None:
    slide = open_slide(cmu_svs)
    slide.close()
    with pytest.raises(SlideError, match="closed"):
        slide.read_region((0, 0), 0, (4, 4))
