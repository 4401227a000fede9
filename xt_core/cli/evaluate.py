"""``xt-slide evaluate --model PATH MANIFEST``: the training metrics of a model on a manifest, as JSON."""

from __future__ import annotations

import argparse
import json

from xt_core.cli._options import non_negative_int, positive_int


def add_parser(sub, name: str, parents) -> None:
    p = sub.add_parser(
        name, parents=parents,
        help="metrics of a model on the slides of a manifest (accuracy, balanced accuracy, F1, AUC, confusion)",
    )
    p.add_argument("manifest", help="CSV manifest (slide, label, optional annotation, split, mpp)")
    p.add_argument("--model", required=True, help="checkpoint folder (model.safetensors + config.json)")
    p.add_argument("--split", action="append", default=None,
                   help="evaluate only rows of this split (repeatable; default: every row)")
    p.add_argument("--out", help="write the metrics JSON to this file")
    p.add_argument("--batch-size", type=positive_int, default=8, help="regions per encoder batch (default 8)")
    p.add_argument("--workers", type=non_negative_int, default=2, help="reading threads (default 2)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    p.add_argument("--tissue-threshold", type=float, default=None,
                   help="tissue fraction a region needs (default: the model's)")
    p.add_argument("--feature-cache", default=None, metavar="DIR",
                   help="frozen-mode feature cache: reuse (and add to) the cached region features of this "
                        "model's region encoder instead of encoding every region again")
    p.add_argument("--json", action="store_true", help="print the metrics JSON on stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from xt_core.outputs.atomic import write_json
    from xt_core.train.evaluate import evaluate

    result = evaluate(args.model, args.manifest, split=args.split, batch_size=args.batch_size,
                      workers=args.workers, device=args.device, tissue_threshold=args.tissue_threshold,
                      feature_cache=args.feature_cache)
    result["model"] = str(args.model)
    result["manifest"] = str(args.manifest)
    if args.out:
        write_json(args.out, result)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_metrics(result))
    return 0


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def format_metrics(result: dict) -> str:
    lines = [f"slides:            {result['n_slides']} ({result['n']} labelled)"]
    for key in ("loss", "accuracy", "balanced_accuracy", "macro_f1", "auc"):
        lines.append(f"{key + ':':<19}{_fmt(result.get(key))}")
    cm = result.get("confusion_matrix")
    if cm:
        classes = result["classes"]
        width = max(8, *(len(c) for c in classes)) + 1
        lines.append("confusion (rows: true, columns: predicted):")
        lines.append(" " * width + "".join(f"{c:>{width}}" for c in classes))
        for c, row in zip(classes, cm):
            lines.append(f"{c:>{width}}" + "".join(f"{v:>{width}}" for v in row))
    seg = result.get("segmentation")
    if seg:
        lines.append(f"segmentation:      {seg['cells']} cells, accuracy {_fmt(seg['accuracy'])}, "
                     f"macro F1 {_fmt(seg['macro_f1'])}")
    return "\n".join(lines)
