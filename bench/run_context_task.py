"""Which context works: every context encoder on the clustered-vs-scattered task (README table).

    python bench/run_context_task.py                     # every variant, slides in a temp folder
    python bench/run_context_task.py --work /tmp/ctx     # keep slides, cache and runs there
    python bench/run_context_task.py --only attention-rope2d --epochs 10

The task is :mod:`xt_bench.context_task`. Every variant trains with ``xt-slide train`` under
the same budget (frozen ImageNet EfficientNet-Lite0 from its package weights, one shared
feature cache, the same epochs, schedule, optimiser and seed; context width 96) and is scored
by ``xt-slide evaluate`` on the unseen test slides (the last epoch's checkpoint: no
validation split, so nothing about the test slides picks a checkpoint). One thread per run
(``--threads``), so per-epoch times compare the encoders rather than the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: name -> (context_encoder, context_kwargs). Transformer widths as the default model
#: (depth 2, 4 heads, MLP ratio 2, dropout 0.1); Mamba as xT (4 bidirectional layers).
#: HyperAttention is made approximate at this length (exact_below 0, blocks and samples of
#: 32 of the 256 tokens); Transformer-XL runs in segments of 64 tokens (16 regions) with
#: 64 tokens of memory, so it sees the slide through its memory as on a large slide.
TRANSFORMER = {"depth": 2, "heads": 4, "mlp_ratio": 2.0, "dropout": 0.1}
HYPER = {**TRANSFORMER, "exact_below": 0, "block_size": 32, "sample_size": 32}
XL = {**TRANSFORMER, "segment_len": 64, "mem_len": 64}
VARIANTS: dict[str, tuple[str, dict]] = {
    "none": ("none", {}),
    "attention": ("attention", TRANSFORMER),
    "attention-normed": ("attention", {**TRANSFORMER, "positions": "normed"}),
    "attention-rope2d": ("attention", {**TRANSFORMER, "positions": "rope2d"}),
    "hyper": ("hyper", HYPER),
    "hyper-rope2d": ("hyper", {**HYPER, "positions": "rope2d"}),
    "transformer_xl": ("transformer_xl", XL),
    "transformer_xl-rope2d": ("transformer_xl", {**XL, "positions": "rope2d"}),
    "mamba": ("mamba", {"depth": 4}),
    "mamba-normed": ("mamba", {"depth": 4, "positions": "normed"}),
    "mamba-normed-alternate": ("mamba", {"depth": 4, "positions": "normed", "scan": "alternate"}),
}


def train_config(name: str, work: Path, epochs: int) -> dict:
    """The training config of one variant: everything but the context encoder is shared."""
    encoder, kwargs = VARIANTS[name]
    return {
        "model": {
            "name": f"context-task-{name}", "classes": ["clustered", "scattered"],
            "region_encoder": "efficientnet_lite0", "region_size": 224, "chunk_size": 224, "target_mpp": 0.5,
            "token_pool": 2, "context_encoder": encoder, "context_dim": 96, "context_kwargs": kwargs,
            "pooling": "attention", "classification": True, "segmentation": False, "tissue_threshold": 0.05,
        },
        "region_weights": "package",
        "manifest": str(work / "data" / "manifest.csv"),
        "out_dir": str(work / "runs" / name),
        "feature_cache": str(work / "feature_cache"),
        "mode": "frozen", "frozen_views": 1, "augment": False,
        "epochs": epochs, "lr": 1e-3, "min_lr": 1e-5, "weight_decay": 0.05, "warmup_epochs": 1.0,
        "grad_clip": 5.0, "slides_per_step": 4, "batch_size": 16, "workers": 2, "label_smoothing": 0.0,
        "train_split": "train", "val_split": None, "monitor": "train_loss", "seed": 0, "device": "cpu",
        "deterministic": True, "keep_checkpoints": 1, "progress": False,
    }


def _run(cmd: list[str], env: dict) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}")


def run_variant(name: str, work: Path, epochs: int, env: dict) -> dict:
    """Train and evaluate one variant with the CLI; returns its row of the table."""
    out = work / "runs" / name
    config = work / "configs" / f"{name}.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(train_config(name, work, epochs), indent=1), encoding="utf-8")
    bin_dir = Path(sys.executable).parent
    start = time.perf_counter()
    _run([str(bin_dir / "xt-slide"), "train", str(config), "--no-progress"], env)
    train_s = time.perf_counter() - start
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    metrics_path = out / "test_metrics.json"
    _run([str(bin_dir / "xt-slide"), "evaluate", str(work / "data" / "manifest.csv"), "--model",
          str(out / f"epoch-{epochs:03d}"), "--split", "test", "--out", str(metrics_path),
          "--feature-cache", str(work / "feature_cache")], env)
    test = json.loads(metrics_path.read_text())
    last = history[-1]
    return {
        "variant": name, "encoder": VARIANTS[name][0], "kwargs": VARIANTS[name][1],
        "test_accuracy": test["accuracy"], "test_auc": test["auc"], "test_n": test["n"],
        "train_accuracy": last.get("train_accuracy"), "train_loss": last.get("train_loss"),
        "epoch_s": statistics.median(r["time_s"] for r in history), "train_wall_s": train_s,
    }


def position_scale(work: Path) -> str:
    """How large the sin-cos terms are next to the tokens they are added to, at initialisation
    (``absolute``) and after the LayerNorm of ``normed`` / ``rope2d``, on cached real features."""
    import torch
    from safetensors.torch import load_file

    from xt_core.models.position import sincos_2d
    from xt_core.models.xt import create_model

    files = sorted((work / "feature_cache").glob("*.safetensors"))[:16]
    features = torch.cat([load_file(str(f))["features"] for f in files])
    torch.manual_seed(0)
    model = create_model(train_config("attention-normed", work, 1)["model"])
    with torch.no_grad():
        projected = model.proj(features).reshape(-1, 96)
        normed = model.token_norm(projected)
    position = sincos_2d(torch.arange(16).repeat_interleave(16), torch.arange(16).repeat(16), 96)

    def rms(t: torch.Tensor) -> float:
        return float(t.pow(2).mean().sqrt())

    def spread(t: torch.Tensor) -> float:  # how much tokens differ from one another, per channel
        return float(t.std(0).pow(2).mean().sqrt())

    return (f"features: RMS {rms(features):.2f}; projected tokens at initialisation: RMS {rms(projected):.2f}, "
            f"spread across tokens {spread(projected):.2f}; after the LayerNorm: RMS {rms(normed):.2f}, spread "
            f"{spread(normed):.2f}; 2D sin-cos: RMS {rms(position):.2f}, spread {spread(position):.2f}")


def table(rows: list[dict]) -> str:
    lines = ["| context encoder | positions | test accuracy | test AUC | last-epoch train loss / accuracy | s / epoch |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        kw = r["kwargs"]
        pos = kw.get("positions", "absolute") + (", alternating scan" if kw.get("scan") == "alternate" else "")
        if r["encoder"] == "none":
            pos = "-"
        lines.append(f"| {r['encoder']} | {pos} | {r['test_accuracy']:.1%} | {r['test_auc']:.3f} | "
                     f"{r['train_loss']:.3f} / {r['train_accuracy']:.1%} | {r['epoch_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="folder for slides, cache and runs (default: temp)")
    parser.add_argument("--train", type=int, default=128, help="training slides (default 128)")
    parser.add_argument("--test", type=int, default=64, help="test slides (default 64)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--only", action="append", choices=list(VARIANTS), help="run only these variants")
    args = parser.parse_args(argv)

    from xt_bench.context_task import make_slides

    work = args.work or Path(tempfile.mkdtemp(prefix="xt-context-task-"))
    manifest = work / "data" / "manifest.csv"
    if not manifest.is_file():
        start = time.perf_counter()
        make_slides(work / "data", train=args.train, test=args.test)
        print(f"slides: {args.train} train + {args.test} test in {time.perf_counter() - start:.0f} s -> {work}",
              file=sys.stderr)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "HF_HUB_OFFLINE": "1"}
    rows = []
    results = work / "results.jsonl"
    for name in args.only or list(VARIANTS):
        row = run_variant(name, work, args.epochs, env)
        rows.append(row)
        with results.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{name}: test accuracy {row['test_accuracy']:.1%}, {row['epoch_s']:.1f} s/epoch, "
              f"train {row['train_wall_s']:.0f} s", file=sys.stderr, flush=True)
    print(f"load average {'/'.join(f'{x:.1f}' for x in os.getloadavg())}, {args.train} train / {args.test} "
          f"test slides, {args.epochs} epochs\n")
    print(table(rows))
    print("\n" + position_scale(work))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
