"""Regenerate the README's region-reading figures: ``make bench`` (or run this file).

Reads every region of each slide, decoded to RGB, with a plain sequential OpenSlide loop
and with xt_core's read-ahead stream (1 and 2 worker threads), and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from xt_bench.reading import machine_info, read_benchmark
from xt_core.sample_data import sample_slide_path

SHARED_SLIDES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "slides"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cases = [(sample_slide_path(), "CMU-1-Small-Region.svs (JPEG, SVS)")]
    tcga = SHARED_SLIDES / "tcga-cr-7395-01a-01-ts1.svs"
    if tcga.exists():
        cases.append((tcga, "tcga-cr-7395 (JPEG 2000, SVS)"))
    results = [(label, read_benchmark(str(path), region_size=512, min_seconds=args.seconds)) for path, label in cases]
    if args.json:
        print(json.dumps([r.as_dict() for _, r in results]))
        return 0
    m = machine_info()
    print(f"Machine: {m['cpu_count']} CPUs, {m['processor']}, Python {m['python']}, {m['system']}")
    print()
    print("| slide | regions (512 px) | sequential OpenSlide | stream, 1 worker | stream, 2 workers |")
    print("|---|---|---|---|---|")
    for label, r in results:
        rates = r.regions_per_s
        base = rates["sequential_openslide"]
        cells = [f"{rates[k]:.1f} ({rates[k] / base:.2f}x)" for k in ("stream_1_workers", "stream_2_workers")]
        print(f"| {label} | {r.regions} | {base:.1f} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
