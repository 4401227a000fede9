"""``xt-slide train`` and ``xt-slide evaluate``."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from conftest import CLASSES, tiny_model

from xt_core.cli.main import main


def test_train_then_evaluate(small_manifest: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": {k: v for k, v in tiny_model().items() if k != "classes"},  # classes from the manifest
        "region_weights": "efficientnet_lite0_imagenet",
        "manifest": str(small_manifest), "out_dir": "out", "mode": "frozen", "epochs": 1, "workers": 0,
    }))
    assert main(["train", str(config), "--no-progress", "--set", "epochs=2", "--set", "lr=1e-3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    out = tmp_path / "out"  # relative to the config file
    assert summary["out_dir"] == str(out) and summary["epochs_done"] == 2 and summary["best"] == str(out / "best")
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    saved = json.loads((out / "best" / "config.json").read_text())
    assert saved["config"]["classes"] == sorted(CLASSES)  # the manifest's labels, sorted

    report = tmp_path / "metrics.json"
    assert main(["evaluate", "--model", str(out / "best"), str(small_manifest), "--split", "val",
                 "--out", str(report), "--workers", "0"]) == 0
    text = capsys.readouterr().out
    assert "balanced_accuracy:" in text and "confusion (rows: true, columns: predicted):" in text
    metrics = json.loads(report.read_text())
    assert metrics["n_slides"] == metrics["n"] == 3 and metrics["split"] == "val"
    assert len(metrics["confusion_matrix"]) == 3 and sum(map(sum, metrics["confusion_matrix"])) == 3
    assert {"accuracy", "balanced_accuracy", "macro_f1", "auc", "loss", "slides"} <= set(metrics)

    # the frozen run's feature cache (val slides included) serves evaluation: no region re-encoded, same metrics
    cache = out / "feature_cache"
    cached_files = sorted(cache.iterdir())
    cached_report = tmp_path / "cached.json"
    assert main(["evaluate", "--model", str(out / "best"), str(small_manifest), "--split", "val",
                 "--out", str(cached_report), "--workers", "0", "--feature-cache", str(cache)]) == 0
    capsys.readouterr()
    assert sorted(cache.iterdir()) == cached_files  # every slide was a hit
    cached = json.loads(cached_report.read_text())
    assert cached["confusion_matrix"] == metrics["confusion_matrix"]
    for a, b in zip(cached["slides"], metrics["slides"]):
        assert a["slide"] == b["slide"] and a["prediction"] == b["prediction"]
        assert all(abs(a["probabilities"][c] - b["probabilities"][c]) < 1e-5 for c in a["probabilities"])

    # --resume after the last epoch does nothing more
    assert main(["train", str(config), "--no-progress", "--set", "epochs=2", "--set", "lr=1e-3", "--resume"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_bad_input_is_one_line_and_exit_2(small_manifest: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"model": tiny_model(), "manifest": "missing.csv", "out_dir": "o"}))
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'missing.csv'}: manifest not found"
    assert main(["train", str(tmp_path / "none.yaml")]) == 2
    assert "training config not found" in capsys.readouterr().err
    (tmp_path / "model.pt").write_bytes(b"\x80\x04K\x01.")
    assert main(["evaluate", "--model", str(tmp_path / "model.pt"), str(small_manifest)]) == 2
    assert "pickle" in capsys.readouterr().err
