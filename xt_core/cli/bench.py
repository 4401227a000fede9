"""``xt-slide bench read SLIDE``: throughput figures printed (and written with ``--json``)."""

from __future__ import annotations

import argparse
import json

from xt_core.cli._options import positive_float, positive_int

MODES = ("read",)


def add_parser(sub, name: str, parents) -> None:
    p = sub.add_parser(name, parents=parents, help="measure throughput (bench read SLIDE)")
    p.add_argument("mode", choices=MODES, help="read: regions/s read and decoded, 1 and 2 workers vs a sequential loop")
    p.add_argument("slide")
    p.add_argument("--region-size", type=positive_int, default=512)
    p.add_argument("--target-mpp", type=positive_float, default=None,
                   help="working resolution (default: the slide's level 0)")
    p.add_argument("--mpp", type=positive_float, default=None, help="the slide's mpp if its header has none")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--seconds", type=positive_float, default=3.0, help="minimum time per configuration")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from xt_core.bench import read_benchmark

    result = read_benchmark(
        args.slide, region_size=args.region_size, target_mpp=args.target_mpp, batch_size=args.batch_size,
        min_seconds=args.seconds, mpp=args.mpp,
    )
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    print(f"{result.slide}: {result.regions} regions of {result.region_size} px, "
          f"backend {result.backend}, batch {result.batch_size}, {result.passes} passes, "
          f"{result.machine['cpu_count']} CPUs")
    base = result.regions_per_s["sequential_openslide"]
    for name, rate in result.regions_per_s.items():
        print(f"  {name:<22} {rate:8.1f} regions/s  ({rate / base:.2f}x)")
    return 0
