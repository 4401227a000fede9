"""Regenerate the README's model-throughput figures (or run this file).

``xt-slide bench SLIDE --json`` in a fresh process per configuration (allocator settings are
per process): as shipped (glibc tuned by xt_core.runtime, channels-last), glibc untouched
(``XT_NO_TUNING=1``), tcmalloc preloaded (where libtcmalloc-minimal4 is installed), and one
torch thread. Then the region encoder alone without channels-last, for the memory-format
figure. Prints Markdown tables. The slide is a generated 8192 px pyramid of real H&E tiles
(``xt_core.bench.make_bench_slide``) unless ``--slide`` is given.

The figures are best-of-N on whatever else the machine is doing; the load average before and
after each run is printed with it, so a busy machine shows.
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
import json, os, sys, torch
from xt_core import runtime
from xt_core.bench import encoder_benchmark, standin_model
applied = runtime.configure()
model = standin_model()
if sys.argv[1] == "channels_last":
    model.region_encoder.to(memory_format=torch.channels_last)
bs = int(sys.argv[2])
x = torch.randint(0, 256, (bs, 512, 512, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
runs = [encoder_benchmark(model, x, batches=int(sys.argv[3]), warmup=2) for _ in range(int(sys.argv[4]))]
best = max(runs, key=lambda r: r["regions_per_s"])
best["allocator"] = applied["allocator"]
print(json.dumps(best))
"""


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slide", default=None, help="slide to bench (default: a generated 8192 px slide)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--size", type=int, default=8192, help="side of the generated slide, px")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from xt_core.bench import machine_info, make_bench_slide
    from xt_core.runtime import tcmalloc_path

    tmp = None
    slide = args.slide
    if slide is None:
        tmp = tempfile.TemporaryDirectory(prefix="xt-modelbench-")
        slide = str(make_bench_slide(Path(tmp.name) / f"bench-{args.size}px.tif", args.size))
    xt = [sys.executable, "-m", "xt_core.cli.main", "bench", slide, "--json", "--batch-size", str(args.batch_size),
          "--workers", str(args.workers), "--repeats", str(args.repeats)]
    if args.model:
        xt += ["--model", args.model]

    configs = [("as shipped: glibc tuned, channels-last", _env())]
    configs.append(("glibc untouched (XT_NO_TUNING=1)", _env(XT_NO_TUNING="1")))
    lib = tcmalloc_path()
    if lib:
        configs.append(("tcmalloc preloaded", _env(LD_PRELOAD=lib)))
    configs.append(("as shipped, 1 torch thread (XT_NUM_THREADS=1)", _env(XT_NUM_THREADS="1")))
    results = []
    for label, env in configs:
        print(f"running: {label}", file=sys.stderr, flush=True)
        results.append((label, _run(xt, env)))

    encoder_rows = []
    for label, fmt, env in [("contiguous (NCHW), glibc untouched", "contiguous", _env(XT_NO_TUNING="1")),
                            ("contiguous (NCHW), glibc tuned", "contiguous", _env()),
                            ("channels-last, glibc untouched", "channels_last", _env(XT_NO_TUNING="1")),
                            ("channels-last, glibc tuned", "channels_last", _env())]:
        print(f"running: encoder only, {label}", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-c", ENCODER_CHILD, fmt, str(args.batch_size), "12", str(args.repeats)]
        encoder_rows.append((label, _run(cmd, env)))
    if tmp is not None:
        tmp.cleanup()

    if args.json:
        print(json.dumps({"end_to_end": dict(results), "encoder_only": dict(encoder_rows)}))
        return 0
    m = machine_info()
    first = results[0][1]
    print(f"Machine: {m['cpu_count']} CPUs, {m['processor']}, Python {m['python']}, {m['system']}; "
          f"model: {first['model'].split(':')[0]}; slide: {Path(first['slide']).name}, {first['regions']} tissue "
          f"regions of {first['region_size']} px at {first['target_mpp']} um/px; batch {first['batch_size']}, "
          f"{first['workers']} reader workers; best of {first['repeats']}")
    print()
    print("| configuration | end to end, regions/s | encoder only, regions/s | ratio | CPU user / sys s (e2e) "
          "| peak RSS MB | load avg before/after |")
    print("|---|---|---|---|---|---|---|")
    for label, r in results:
        e = r["end_to_end"]
        print(f"| {label} | {r['end_to_end_regions_per_s']:.1f} | {r['encoder_only_regions_per_s']:.1f} | "
              f"{r['ratio']:.2f} | {e['cpu_user_s']:.0f} / {e['cpu_sys_s']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{r['load'][0]:.1f} / {r['load'][1]:.1f} |")
    print()
    print("| region encoder alone (in-memory batches) | regions/s | best batch, regions/s | CPU user / sys s "
          "| load avg before/after |")
    print("|---|---|---|---|---|")
    for label, r in encoder_rows:
        print(f"| {label} | {r['regions_per_s']:.1f} | {r['best_batch_regions_per_s']:.1f} | "
              f"{r['cpu_user_s']:.0f} / {r['cpu_sys_s']:.0f} | {r['load'][0]:.1f} / {r['load'][1]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
