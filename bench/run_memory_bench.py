"""Regenerate the README's memory-against-slide-size figures (or run this file).

Generates square pyramidal TIFFs of real H&E tiles (4k, 16k and 32k px at 0.5 um/px by
default) and runs ``predict_slide`` on each in a fresh process, which reports its own peak
RSS. Prints a Markdown table and the largest/smallest ratio. The 32k slide is ~4,000 regions
of 512 px at 0.5 um/px, minutes on a 2-core CPU; ``--target-mpp 2`` runs 16x fewer regions.
"""

from __future__ import annotations

import argparse
import json
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4096,16384,32768")
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="default: as xt-slide classify (RunSettings)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--target-mpp", type=float, default=None)
    parser.add_argument("--backend", default="auto", help="reader for open_slide (default auto, as the CLI)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from xt_bench.memory import memory_benchmark
    from xt_bench.reading import machine_info

    sizes = tuple(int(s) for s in args.sizes.split(","))
    result = memory_benchmark(sizes, model=args.model, batch_size=args.batch_size, workers=args.workers,
                              target_mpp=args.target_mpp, backend=args.backend,
                              progress=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(result))
        return 0
    m = machine_info()
    run0 = result["runs"][0]
    print(f"Machine: {m['cpu_count']} CPUs, {m['processor']}, Python {m['python']}, {m['system']}; "
          f"model: {run0['model'].split(':')[0]}; batch {result['batch_size'] or 'auto'}, {result['workers']} reader workers; "
          f"allocator: {run0['runtime'].get('allocator')}")
    print()
    print("| slide (px, 0.5 um/px) | file MiB | regions encoded / grid | reader | peak RSS MB "
          "| peak after model load / after open_slide MB | regions/s | predict_slide s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in result["runs"]:
        print(f"| {r['size_px']} | {r['slide_mib']:.0f} | {r['regions']} / {r['regions_total']} | {r['backend']} | "
              f"{r['peak_rss_mb']:.0f} | {r['peak_rss_after_model_load_mb']:.0f} / "
              f"{r['peak_rss_after_open_slide_mb']:.0f} | "
              f"{r['regions_per_s']:.1f} | {r['total_s']:.0f} |")
    print()
    print(f"Peak RSS {sizes[-1]} px / {sizes[0]} px: **{result['peak_rss_ratio']:.2f}**")
    return 0


if __name__ == "__main__":
    sys.exit(main())
