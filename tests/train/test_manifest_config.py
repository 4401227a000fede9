"""The CSV manifest and the training config: parsing, relative paths, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from xt_core.train.config import ConfigError, TrainConfig, load_train_config
from xt_core.train.manifest import ManifestError, read_manifest


def _files(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")


def test_manifest_columns_paths_and_splits(tmp_path: Path) -> None:
    _files(tmp_path, "slides/a.svs", "slides/b.svs", "ann/a.geojson", "c.tif")
    (tmp_path / "m.csv").write_text(
        "Slide,label,annotation,split,mpp,patient\n"
        "slides/a.svs,tumour,ann/a.geojson,train,0.25,p1\n"
        "slides/b.svs,normal,,Validation,,p2\n"
        f"{tmp_path / 'c.tif'},,,,,p3\n"
        "# a comment\n\n"
    )
    m = read_manifest(tmp_path / "m.csv")
    assert [r.slide for r in m] == [tmp_path / "slides/a.svs", tmp_path / "slides/b.svs", tmp_path / "c.tif"]
    a, b, c = m.rows
    assert (a.label, a.annotation, a.split, a.mpp, a.line) == ("tumour", tmp_path / "ann/a.geojson", "train", 0.25, 2)
    assert (b.split, b.annotation, b.mpp) == ("val", None, None)
    assert (c.label, c.split) == (None, "train")
    assert m.labels == ["normal", "tumour"] and m.splits == ["train", "val"]
    assert [r.slide.name for r in m.split("train")] == ["a.svs", "c.tif"]
    with pytest.raises(ManifestError, match=r"m.csv: row 3: label 'normal' is not a class"):
        m.check_labels(["tumour", "stroma"])


@pytest.mark.parametrize("text, message", [
    ("file,label\nx.svs,a\n", "row 1: a manifest needs a 'slide' \\(or 'path'\\) column; found: file, label"),
    ("slide,label\nmissing.svs,a\n", "row 2: slide 'missing.svs' not found"),
    ("slide,label\n,a\n", "row 2: the slide path is empty"),
    ("slide,mpp\na.svs,fast\n", "row 2: mpp 'fast' is not a positive number"),
    ("slide,annotation\na.svs,none.geojson\n", "row 2: annotation 'none.geojson' not found"),
    ("slide\n", "lists no slides"),
    ("", "empty"),
])
def test_manifest_errors_name_file_and_row(tmp_path: Path, text: str, message: str) -> None:
    _files(tmp_path, "a.svs")
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(ManifestError, match=message) as info:
        read_manifest(tmp_path / "m.csv")
    assert str(info.value).startswith(str(tmp_path / "m.csv"))


def test_config_from_yaml_resolves_paths_and_checks_keys(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "run.yaml").write_text(
        "model: {classes: [a, b], context_encoder: mamba}\n"
        "manifest: ../data/m.csv\nout_dir: runs/one\nregion_weights: efficientnet_lite0_imagenet\n"
        "augment: {hue: 0.0, hed_scale: 1e-2}\nlr: 3e-4\n"  # YAML 1.1 reads 3e-4 as text
    )
    cfg = load_train_config(tmp_path / "cfg" / "run.yaml", {"epochs": 3})
    assert cfg.manifest == str(tmp_path / "cfg" / "../data/m.csv")
    assert cfg.out_dir == str(tmp_path / "cfg" / "runs/one")
    assert cfg.region_weights == "efficientnet_lite0_imagenet"
    assert (cfg.lr, cfg.epochs, cfg.augment.hue, cfg.augment.hed_scale, cfg.augment.flip) == (3e-4, 3, 0.0, 0.01, True)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    (tmp_path / "bad.yaml").write_text("model: {}\nmanifest: m.csv\nout_dir: o\nlearning_rate: 1\n")
    with pytest.raises(ConfigError, match="bad.yaml: unknown training config keys: learning_rate"):
        load_train_config(tmp_path / "bad.yaml")
    (tmp_path / "bad.json").write_text('{"model": {}, "manifest": "m.csv", "out_dir": "o", "mode": "fast"}')
    with pytest.raises(ConfigError, match="mode must be one of exact, xl_detached, frozen"):
        load_train_config(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="not found"):
        load_train_config(tmp_path / "none.yaml")
    with pytest.raises(ValueError, match="unknown augment keys: blur"):
        TrainConfig(model={}, manifest="m", out_dir="o", augment={"blur": 1})
