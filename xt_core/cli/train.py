"""``xt-slide train CONFIG``: train a model as a YAML/JSON config says (see xt_core.train.loop)."""

from __future__ import annotations

import argparse
import json

from xt_core.cli._options import non_negative_int, positive_int


def add_parser(sub, name: str, parents) -> None:
    p = sub.add_parser(
        name, parents=parents,
        help="train a model on the slides of a manifest (config: YAML or JSON)",
        description="Train an xT model end to end. Checkpoints go to OUT_DIR/epoch-XXX/, the best one to "
                    "OUT_DIR/best/, metrics to OUT_DIR/metrics.jsonl. The config keys are listed in "
                    "xt_core/train/loop.py.",
    )
    p.add_argument("config", help="training config (.yaml, .yml or .json)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue the run in out_dir from its last complete epoch (or from CHECKPOINT)")
    p.add_argument("--out", dest="out_dir", help="output folder (overrides out_dir)")
    p.add_argument("--epochs", type=positive_int, help="overrides epochs")
    p.add_argument("--mode", choices=["exact", "xl_detached", "frozen"], help="overrides mode")
    p.add_argument("--device", help="overrides device (auto, cpu, cuda, cuda:1)")
    p.add_argument("--batch-size", type=positive_int, help="overrides batch_size (regions per encoder batch)")
    p.add_argument("--workers", type=non_negative_int, help="overrides workers (reading threads)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any top-level config key (VALUE read as YAML), e.g. --set lr=3e-4")
    p.add_argument("--stop-after", type=positive_int, help="stop after this many epochs (resume later)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--json", action="store_true", help="print the run's summary as one JSON object")
    p.set_defaults(run=run)


def parse_overrides(args: argparse.Namespace) -> dict:
    import yaml

    overrides: dict = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"--set needs KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value) if value.strip() else None
    for key in ("out_dir", "epochs", "mode", "device", "batch_size", "workers"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    if args.no_progress:
        overrides["progress"] = False
    return overrides


def run(args: argparse.Namespace) -> int:
    from xt_core.train import fit, load_train_config

    try:
        overrides = parse_overrides(args)
    except argparse.ArgumentTypeError as exc:
        print(f"error: {exc}")
        return 2
    cfg = load_train_config(args.config, overrides)
    result = fit(cfg, resume=args.resume, stop_after=args.stop_after)
    summary = {
        "out_dir": str(result.out_dir),
        "best": str(result.best_dir) if result.best_dir else None,
        "best_epoch": result.best_epoch,
        "monitor": result.monitor,
        "best_value": result.best_value,
        "epochs_done": result.history[-1]["epoch"] if result.history else 0,
        "last": {k: v for k, v in (result.history[-1] if result.history else {}).items()
                 if not k.endswith("confusion_matrix")},
    }
    if args.json:
        print(json.dumps(summary))
    else:
        best = f"{result.best_value:.4f}" if isinstance(result.best_value, float) else result.best_value
        print(f"done: {summary['epochs_done']} epochs in {result.out_dir}; best {result.monitor} {best} "
              f"at epoch {result.best_epoch} -> {summary['best']}")
    return 0
