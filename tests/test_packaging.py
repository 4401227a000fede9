"""A normal (non-editable) install carries every package, the napari manifest and the model."""

from __future__ import annotations

import configparser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _listed_packages() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return {line.strip() for line in cfg["options"]["packages"].splitlines() if line.strip()}


def test_every_python_package_is_listed_in_setup_cfg() -> None:
    found = {".".join(p.parent.relative_to(REPO).parts) for p in REPO.glob("xt_core/**/__init__.py")}
    found |= {".".join(p.parent.relative_to(REPO).parts) for p in REPO.glob("napari_xt/**/__init__.py")}
    found.add("xt_core.sample_data")  # the top-level sample_data/ folder, mapped by package_dir
    assert (REPO / "bench" / "__init__.py").is_file()
    found.add("xt_bench")  # the top-level bench/ folder, mapped by package_dir
    assert found == _listed_packages()


def test_napari_manifest_is_package_data() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert "napari.yaml" in cfg["options.package_data"]["napari_xt"]
    assert (REPO / "napari_xt" / "napari.yaml").resolve() == (REPO / "napari.yaml").resolve()
