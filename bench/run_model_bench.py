"""Regenerate the README's model-throughput figures (or run this file).

For each model (the bundled default model, and the 512 px EfficientNet-Lite0 configuration the
issue measured), ``xt-slide bench SLIDE --json`` runs in a fresh process per configuration
(allocator and OpenMP settings are per process):

* as shipped: glibc tuned and OpenMP waiting passively (``xt_core.runtime``), channels-last;
* nothing applied (``XT_NO_TUNING=1``: glibc's default malloc);
* tcmalloc preloaded instead of the glibc settings (where libtcmalloc-minimal4 is installed);
* the same with spinning OpenMP threads (``OMP_WAIT_POLICY=ACTIVE``);
* one torch thread (``XT_NUM_THREADS=1``), leaving a core to the readers.

Then the region encoder alone on in-memory batches: contiguous (NCHW) vs channels-last, glibc
untouched vs tuned, OpenMP spinning vs passive. "vs best encoder" divides each end-to-end
figure by the best encoder-only figure of any configuration for that model.

The slide is a generated 8192 px pyramid of real H&E tiles (``xt_bench.slides.make_bench_slide``)
unless ``--slide`` is given. Figures are best-of-N on whatever else the machine is doing; the
load average before and after each run is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ENCODER_CHILD = r"""
import json, sys
from xt_core import runtime
runtime.prepare_process()
import torch
from xt_bench.model import encoder_benchmark, load_bench_model
applied = runtime.configure()
model, _ = load_bench_model(sys.argv[1] or None)
if sys.argv[2] == "channels_last":
    model.region_encoder.to(memory_format=torch.channels_last)
bs, r = int(sys.argv[3]), model.config.region_size
x = torch.randint(0, 256, (bs, r, r, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
runs = [encoder_benchmark(model, x, batches=int(sys.argv[4]), warmup=2) for _ in range(int(sys.argv[5]))]
best = max(runs, key=lambda run: run["regions_per_s"])
best.update(allocator=applied["allocator"], omp=applied["omp_wait_policy"])
print(json.dumps(best))
"""


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    for key in ("XT_NO_TUNING", "XT_NUM_THREADS", "OMP_WAIT_POLICY", "LD_PRELOAD"):
        env.pop(key, None)
    env.update(extra)
    return env


def _run(cmd: list[str], env: dict[str, str]) -> dict:
    load0 = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    load1 = os.getloadavg()[0]
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["load"] = (round(load0, 2), round(load1, 2))
    return out


def bench_model(slide: str, model: str | None, args, lib: str | None) -> tuple[list, list]:
    xt = [sys.executable, "-m", "xt_core.cli.main", "bench", slide, "--json", "--batch-size", str(args.batch_size),
          "--workers", str(args.workers), "--repeats", str(args.repeats)]
    if model:
        xt += ["--model", model]
    configs = [("as shipped: glibc tuned, OpenMP passive, channels-last", _env()),
               ("nothing applied (XT_NO_TUNING=1)", _env(XT_NO_TUNING="1"))]
    if lib:
        configs.append(("tcmalloc preloaded instead", _env(LD_PRELOAD=lib)))
    configs.append(("OpenMP spinning (OMP_WAIT_POLICY=ACTIVE)", _env(OMP_WAIT_POLICY="ACTIVE")))
    configs.append(("as shipped, 1 torch thread (XT_NUM_THREADS=1)", _env(XT_NUM_THREADS="1")))
    e2e = []
    for label, env in configs:
        print(f"running: {label}", file=sys.stderr, flush=True)
        e2e.append((label, _run(xt, env)))
    enc = []
    for label, fmt, env in [
        ("contiguous (NCHW), nothing applied", "contiguous", _env(XT_NO_TUNING="1")),
        ("contiguous (NCHW), glibc tuned", "contiguous", _env()),
        ("channels-last, nothing applied", "channels_last", _env(XT_NO_TUNING="1")),
        ("channels-last, glibc tuned, OpenMP passive (as shipped)", "channels_last", _env()),
        ("channels-last, glibc tuned, OpenMP spinning", "channels_last", _env(OMP_WAIT_POLICY="ACTIVE")),
    ]:
        print(f"running: encoder only, {label}", file=sys.stderr, flush=True)
        batches = max(4, 96 // args.batch_size) if e2e[0][1]["region_size"] >= 512 else max(8, 800 // args.batch_size)
        cmd = [sys.executable, "-c", ENCODER_CHILD, model or "", fmt, str(args.batch_size), str(batches),
               str(args.repeats)]
        enc.append((label, _run(cmd, env)))
    return e2e, enc


def print_tables(e2e: list, enc: list) -> None:
    first = e2e[0][1]
    best_encoder = max([r["encoder_only_regions_per_s"] for _, r in e2e]
                       + [r["regions_per_s"] for label, r in enc if label.startswith("channels-last")])
    print(f"Model: {first['model'].split(':')[0]} ({first['region_encoder']}, {first['region_size']} px regions, "
          f"{first['chunk_size']} px chunks); slide: {Path(first['slide']).name}, {first['regions']} tissue regions "
          f"at {first['target_mpp']} um/px; batch {first['batch_size']}, {first['workers']} reader workers; "
          f"best of {first['repeats']}")
    print()
    print("| configuration | end to end, regions/s | encoder only (same process), regions/s | ratio "
          "| vs best encoder | CPU user / sys s (e2e) | peak RSS MB | load avg before/after |")
    print("|---|---|---|---|---|---|---|---|")
    for label, r in e2e:
        e = r["end_to_end"]
        print(f"| {label} | {r['end_to_end_regions_per_s']:.1f} | {r['encoder_only_regions_per_s']:.1f} | "
              f"{r['ratio']:.2f} | {r['end_to_end_regions_per_s'] / best_encoder:.2f} | "
              f"{e['cpu_user_s']:.0f} / {e['cpu_sys_s']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{r['load'][0]:.1f} / {r['load'][1]:.1f} |")
    print()
    print("| region encoder alone (in-memory batches) | regions/s | best batch, regions/s | CPU user / sys s "
          "| load avg before/after |")
    print("|---|---|---|---|---|")
    for label, r in enc:
        print(f"| {label} | {r['regions_per_s']:.1f} | {r['best_batch_regions_per_s']:.1f} | "
              f"{r['cpu_user_s']:.0f} / {r['cpu_sys_s']:.0f} | {r['load'][0]:.1f} / {r['load'][1]:.1f} |")
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slide", default=None, help="slide to bench (default: a generated 8192 px slide)")
    parser.add_argument("--models", default="default,standin512",
                        help="comma-separated: 'default' (bundled model), 'standin512' (EfficientNet-Lite0, "
                             "512 px regions, 256 px chunks: the issue's configuration), or checkpoint paths")
    parser.add_argument("--size", type=int, default=8192, help="side of the generated slide, px")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from xt_bench.model import standin_model
    from xt_bench.reading import machine_info
    from xt_bench.slides import make_bench_slide

    from xt_core.models.checkpoint import save_model
    from xt_core.runtime import tcmalloc_path

    tmp = tempfile.TemporaryDirectory(prefix="xt-modelbench-")
    slide = args.slide or str(make_bench_slide(Path(tmp.name) / f"bench-{args.size}px.tif", args.size))
    lib = tcmalloc_path()
    results = {}
    for name in args.models.split(","):
        model = None if name == "default" else name
        if name == "standin512":
            model = str(save_model(standin_model(), Path(tmp.name) / "standin512"))
        results[name] = bench_model(slide, model, args, lib)
    tmp.cleanup()

    if args.json:
        print(json.dumps({name: {"end_to_end": dict(e2e), "encoder_only": dict(enc)}
                          for name, (e2e, enc) in results.items()}))
        return 0
    m = machine_info()
    print(f"Machine: {m['cpu_count']} CPUs, {m['processor']}, Python {m['python']}, {m['system']}")
    print()
    for e2e, enc in results.values():
        print_tables(e2e, enc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
