"""Build the bundled default model from the shared LC25000 lung tiles: the one documented command.

    .venv/bin/python recipes/default_model/make_default_model.py

1. ``build_dataset.build``: near-duplicate groups, a split by group (60/20/20 of the tiles per
   class), mosaic slides with masks and a manifest, in ``--work`` (default
   ``recipes/default_model/work/``, ignored by git).
2. ``xt_core.train.fit`` with ``train.yaml`` (frozen ImageNet EfficientNet-Lite0, Transformer-XL
   context, classification + segmentation heads); the checkpoint with the lowest validation
   loss is kept.
3. That checkpoint is written in half precision to ``xt_core/models/default_model/``
   (``model.safetensors`` + ``config.json``), loaded back, and evaluated on the held-out test
   slides (slide label: accuracy, balanced accuracy, macro F1, AUC; segmentation: per-token
   accuracy; and per tile: the mean of its tokens' probabilities). The figures and the
   training provenance go into the checkpoint's ``config.json`` and into ``RESULTS.md``.

Runs in about 10-20 minutes on 2 shared CPU cores. Torch uses ``--threads`` (default 1: on a
shared machine one thread is faster than two fighting over the cores); the result is the same
checkpoint for the same thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import build_dataset as bd  # noqa: E402

PACKAGE_DIR = ROOT / "xt_core" / "models" / "default_model"
RESULTS = HERE / "RESULTS.md"
SPLIT_JSON = HERE / "split.json"
COMMAND = "python recipes/default_model/make_default_model.py"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- evaluation
def tile_level(model, slides: list[dict], data_dir: Path, workers: int = 2) -> dict:
    """Per-token and per-tile figures of ``model`` on mosaic slides (via ``predict_slide``, as the CLI runs it).

    Returns the slide-level predictions too, so that they can be checked against ``evaluate``.
    """
    from xt_core.inference import predict_slide
from xt_core.settings import RunSettings
    from xt_core.slide import open_slide
    from xt_core.train.metrics import classification_metrics

    classes = list(model.config.classes)
    t = model.tokens_per_side
    token_true, token_pred = [], []
    occurrences: dict[str, list[np.ndarray]] = {}
    tile_class: dict[str, int] = {}
    slide_probs = []
    for s in slides:
        with open_slide(data_dir / s["slide"]) as slide:
            result = predict_slide(model, slide, RunSettings(device="cpu", workers=workers))
        slide_probs.append(result.probabilities)
        heat = result.heatmap
        for cell in s["tiles"]:
            block = heat[cell["row"] * t : (cell["row"] + 1) * t, cell["col"] * t : (cell["col"] + 1) * t]
            y = classes.index(cell["class"])
            if np.isnan(block).any():  # the region was skipped as glass (never for these tiles)
                continue
            token_true.append(np.full(t * t, y))
            token_pred.append(block.reshape(-1, len(classes)).argmax(-1))
            occurrences.setdefault(cell["tile"], []).append(block.reshape(-1, len(classes)).mean(0))
            tile_class[cell["tile"]] = y
    tt, tp = np.concatenate(token_true), np.concatenate(token_pred)
    names = sorted(occurrences)
    y_tile = np.array([tile_class[n] for n in names])
    p_tile = np.stack([np.mean(occurrences[n], 0) for n in names])
    p_tile = p_tile / p_tile.sum(1, keepdims=True)
    tiles = classification_metrics(y_tile, p_tile, classes)
    y_occ = np.concatenate([np.full(len(occurrences[n]), tile_class[n]) for n in names])
    p_occ = np.concatenate([np.stack(occurrences[n]) for n in names])
    p_occ = p_occ / p_occ.sum(1, keepdims=True)
    occ = classification_metrics(y_occ, p_occ, classes)
    y_slide = np.array([classes.index(s["label"]) for s in slides])
    slide_metrics = classification_metrics(y_slide, np.stack(slide_probs), classes)
    return {
        "tokens": {"n": int(tt.size), "accuracy": float((tt == tp).mean())},
        "unique_tiles": _metrics(tiles, classes),
        "tile_occurrences": _metrics(occ, classes),
        "slides_predict_slide": _metrics(slide_metrics, classes),
    }


def _metrics(m: dict, classes: list[str]) -> dict:
    keep = {k: m.get(k) for k in ("n", "accuracy", "balanced_accuracy", "macro_f1", "auc", "confusion_matrix")}
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in keep.items()}


def heldout_figures(model, manifest: Path, dataset: dict, workers: int) -> dict:
    from xt_core.train import evaluate

    t0 = time.perf_counter()
    ev = evaluate(model, manifest, split="test", device="cpu", workers=workers, batch_size=16)
    classes = ev["classes"]
    figures = {
        "split": "test",
        "slides": _metrics(ev, classes),
        "segmentation_tokens": {k: (round(v, 4) if isinstance(v, float) else v)
                                for k, v in (ev.get("segmentation") or {}).items()},
    }
    test_slides = [s for s in dataset["slides"] if s["split"] == "test"]
    figures.update(tile_level(model, test_slides, manifest.parent, workers))
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    return figures


# ----------------------------------------------------------------------------- report
def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def write_results(path: Path, record: dict) -> None:
    h, tr, ds = record["heldout"], record["training"], record["training"]["dataset"]
    classes = record["classes"]
    parts = tr["runtime_breakdown_s"]
    lines = [
        "# Default model `xt-lung-lc25000-v1`: results",
        "",
        f"Written by `{COMMAND}`; do not edit by hand. Runtime {tr['runtime_s'] / 60:.1f} min (dataset "
        f"{parts['dataset'] / 60:.1f}, training {parts['fit'] / 60:.1f}, evaluation {parts['evaluate'] / 60:.1f}) "
        f"with {tr['threads']} torch thread(s) on {tr['machine']} shared with other jobs.",
        "",
        "## Data",
        "",
        f"LC25000 lung tiles from `{tr['tiles_dir_relative']}` (100 per class, 224 px), assumed "
        f"{ds['assumed_mpp']} um/px. Near-duplicate groups (dihedral x rotation x zoom registration, "
        f"colour histogram, CNN features; see `build_dataset.py`):",
        "",
        "| class | tiles | groups | group sizes | duplicate pairs (registration / CNN only) | colour-rejected candidates |",
        "|---|---|---|---|---|---|",
    ]
    for cls, s in ds["grouping"].items():
        sizes = ", ".join(f"{v}x{k}" for k, v in s["group_sizes"].items())
        lines.append(f"| {cls} | {s['tiles']} | {s['groups']} | {sizes} | {s['duplicate_pairs']} "
                     f"({s['pairs_by_registration']} / {s['pairs_by_cnn_only']}) | "
                     f"{s['candidate_pairs_rejected_by_colour']} |")
    lines += [
        "",
        "Split by group (seeded, per class), before any augmentation:",
        "",
        "| split | " + " | ".join(classes) + " | slides (" + " / ".join(classes) + ") |",
        "|---|" + "---|" * (len(classes) + 1),
    ]
    for split in ("train", "val", "test"):
        cells = [f"{ds['tiles_per_split'][split][c]} tiles / {ds['groups_per_split'][split][c]} groups" for c in classes]
        labels = " / ".join(str(ds["slide_labels_per_split"][split][c]) for c in classes)
        lines.append(f"| {split} | " + " | ".join(cells) + f" | {ds['slides_per_split'][split]} ({labels}) |")
    lines += [
        "",
        "Slides are mosaics of 2x3 to 4x4 tiles of one split (tiles reused across that split's slides), "
        "labelled benign when all tiles are benign, else by the one tumour type present (1 to all tiles).",
        "",
        "## Training",
        "",
        f"`train.yaml`: mode `{tr['config']['mode']}` (ImageNet EfficientNet-Lite0 frozen, "
        f"{tr['config']['frozen_views']} feature views per slide), {tr['config']['epochs']} epochs, "
        f"best epoch by `{tr['monitor']}`: {tr['best_epoch']} (val loss {_fmt(tr['best_val'].get('val_loss'))}, "
        f"val accuracy {_fmt(tr['best_val'].get('val_accuracy'))}, val balanced accuracy "
        f"{_fmt(tr['best_val'].get('val_balanced_accuracy'))}, val token accuracy "
        f"{_fmt(tr['best_val'].get('val_seg_accuracy'))}).",
        "",
        "## Held-out test figures (the shipped half-precision checkpoint)",
        "",
        "| what | n | accuracy | balanced accuracy | macro F1 | AUC (one-vs-rest, macro) |",
        "|---|---|---|---|---|---|",
    ]
    rows = [("slide label (`xt_core.train.evaluate`)", h["slides"]),
            ("tile class, each unique test tile (mean of its tokens over its occurrences)", h["unique_tiles"]),
            ("tile class, every tile occurrence in the test slides", h["tile_occurrences"])]
    for name, m in rows:
        lines.append(f"| {name} | {m['n']} | {_fmt(m['accuracy'])} | {_fmt(m['balanced_accuracy'])} | "
                     f"{_fmt(m['macro_f1'])} | {_fmt(m['auc'])} |")
    seg = h["segmentation_tokens"]
    lines += [
        "",
        f"Segmentation, per token (112 px, about 56 um): accuracy {_fmt(seg.get('accuracy'))}, balanced accuracy "
        f"{_fmt(seg.get('balanced_accuracy'))}, macro F1 {_fmt(seg.get('macro_f1'))} over {seg.get('cells')} tokens.",
        "",
        "Confusion matrices (rows: true, columns: predicted; " + ", ".join(classes) + "):",
        "",
        f"- slides: `{h['slides']['confusion_matrix']}`",
        f"- unique tiles: `{h['unique_tiles']['confusion_matrix']}`",
        f"- tokens: `{seg.get('confusion_matrix')}`",
        "",
        f"The test split holds {sum(ds['tiles_per_split']['test'].values())} tiles from "
        f"{sum(ds['groups_per_split']['test'].values())} near-duplicate groups; the {ds['slides_per_split']['test']} "
        "test slides reuse them, so the slide figures are not independent observations. The per-unique-tile row "
        "is the most honest figure. LC25000 has no patient information: tiles of one patient (or other photographs "
        "of one slide) may still sit in two splits.",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def _add_to_config(folder: Path, extra: dict) -> None:
    """Merge ``extra`` into a checkpoint's config.json (as ``save_model(extra=...)`` lays it out), atomically."""
    from xt_core.outputs.atomic import atomic_path

    path = folder / "config.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    record.update(extra)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiles", default=str(bd.DEFAULT_TILES), help="LC25000 lung folder (lung_n, lung_aca, lung_scc)")
    ap.add_argument("--work", default=str(HERE / "work"), help="work folder: data/, run/ (default: %(default)s)")
    ap.add_argument("--config", default=str(HERE / "train.yaml"))
    ap.add_argument("--out", default=str(PACKAGE_DIR), help="where the shipped checkpoint goes (default: the package)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--seed", type=int, default=0, help="dataset seed (the training seed is in train.yaml)")
    ap.add_argument("--resume", action="store_true", help="continue the training run in --work instead of starting afresh")
    ap.add_argument("--epochs", type=int, default=None, help="override train.yaml's epochs (quick trials)")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from xt_core import __version__
    from xt_core.models.checkpoint import load_model, save_model
    from xt_core.train import fit, load_train_config

    t_start = time.perf_counter()
    work = Path(args.work).resolve()
    data_dir, run_dir = work / "data", work / "run"

    log(f"[1/3] dataset -> {data_dir}")
    t0 = time.perf_counter()
    dataset = bd.build(args.tiles, data_dir, seed=args.seed, cache_dir=work / "cache")
    t_data = time.perf_counter() - t0

    log(f"[2/3] training -> {run_dir}")
    t0 = time.perf_counter()
    overrides = {"manifest": str(data_dir / "manifest.csv"), "out_dir": str(run_dir),
                 "feature_cache": str(work / "feature_cache")}
    if args.epochs:
        overrides["epochs"] = args.epochs
    cfg = load_train_config(args.config, overrides)
    if not args.resume and run_dir.exists():
        shutil.rmtree(run_dir)
    result = fit(cfg, resume=args.resume)
    t_fit = time.perf_counter() - t0
    if result.best_dir is None:
        raise SystemExit("error: training produced no best checkpoint")
    best_record = next(r for r in result.history if r["epoch"] == result.best_epoch)
    log(f"  best epoch {result.best_epoch}: " + ", ".join(
        f"{k} {best_record[k]:.4f}" for k in ("val_loss", "val_accuracy", "val_balanced_accuracy", "val_seg_accuracy")
        if isinstance(best_record.get(k), float)))

    log(f"[3/3] shipped checkpoint -> {args.out}; held-out test evaluation")
    t0 = time.perf_counter()
    out = Path(args.out)
    best = load_model(result.best_dir)
    test_tiles = sorted(t for t, v in dataset["split"].items() if v["split"] == "test")
    try:
        tiles_rel = os.path.relpath(dataset["tiles_dir"], ROOT)
    except ValueError:
        tiles_rel = dataset["tiles_dir"]
    training = {
        "recipe": "recipes/default_model (make_default_model.py, build_dataset.py, train.yaml)",
        "command": COMMAND,
        "data": "LC25000 lung histopathology tiles (Borkowski et al. 2019), 100 per class, 224 px",
        "tiles_dir_relative": tiles_rel,
        "dataset": {k: dataset[k] for k in ("seed", "assumed_mpp", "folders", "criteria", "grouping",
                                            "tiles_per_split", "groups_per_split", "slides_per_split",
                                            "slide_labels_per_split")},
        "config": {k: v for k, v in cfg.to_dict().items() if k not in ("manifest", "out_dir", "feature_cache")},
        "monitor": result.monitor,
        "best_epoch": result.best_epoch,
        "best_val": {k: v for k, v in best_record.items() if k.startswith("val_") and k != "val_confusion_matrix"},
        "threads": args.threads,
        "torch": torch.__version__,
        "xt_slide_version": __version__,
    }
    extra = {
        "training": training,
        "heldout_test_tiles": test_tiles,
        "intended_use": "demo, pipeline smoke tests, a starting point for fine-tuning on a lab's own slides",
        "not_for": "diagnosis or any clinical use; tissue other than lung H&E; other magnifications",
    }
    save_model(best, out, extra=extra, dtype=torch.float16)
    shipped = load_model(out)
    heldout = heldout_figures(shipped, data_dir / "manifest.csv", dataset, workers=2)
    t_eval = time.perf_counter() - t0
    runtime = time.perf_counter() - t_start
    training["runtime_s"] = round(runtime, 1)
    training["runtime_breakdown_s"] = {"dataset": round(t_data, 1), "fit": round(t_fit, 1), "evaluate": round(t_eval, 1)}
    training["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs"
    extra["heldout"] = heldout
    # The figures go into config.json only: model.safetensors stays the file they were measured
    # on (re-saving would give the same tensors, but safetensors writes its metadata in hash-map
    # order, so the bytes and the sha256 could differ).
    _add_to_config(out, extra)
    assert load_model(out).weights_sha256 == shipped.weights_sha256
    SPLIT_JSON.write_text(json.dumps({
        "note": "written by make_default_model.py: each LC25000 tile's near-duplicate group and split",
        "criteria": dataset["criteria"], "seed": dataset["seed"], "tiles": dataset["split"],
    }, indent=1) + "\n", encoding="utf-8")
    write_results(RESULTS, {"classes": list(shipped.config.classes), "heldout": heldout, "training": training})
    size = (out / "model.safetensors").stat().st_size
    s, u = heldout["slides"], heldout["unique_tiles"]
    log(f"done in {runtime / 60:.1f} min: {out} ({size / 1e6:.1f} MB)\n"
        f"  test slides: accuracy {_fmt(s['accuracy'])}, balanced {_fmt(s['balanced_accuracy'])}, macro F1 "
        f"{_fmt(s['macro_f1'])}, AUC {_fmt(s['auc'])}\n"
        f"  test tiles (unique): accuracy {_fmt(u['accuracy'])}, AUC {_fmt(u['auc'])}; tokens: accuracy "
        f"{_fmt(heldout['segmentation_tokens'].get('accuracy'))}\n  {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
