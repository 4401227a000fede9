"""Regenerate the README's Dask batch figures (or run this file): slides per hour, in-process
against ``--scheduler local`` with 1 and 2 worker processes.

The cohort is the real slides of ``../shared/data/slides`` (``--slides``), each linked
``--copies`` times under its own name so that every configuration runs the same, longer list
(the files are not copied). Each configuration is one ``xt-slide batch ... --segment --mpp 0.5``
in a fresh process, timed from the command's start to its exit: model loading, starting the
workers and a bad slide included, as a user waits for it. In-process with one torch thread
is there to tell the gain of several processes from that of fewer threads each. Slides per hour counts every slide
of the cohort (done or failed: a failed one is a finished row too). Best of ``--repeats``;
the load average before and after each run is printed beside it, because figures on a
shared machine move with whatever else it is doing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_SLIDES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "slides"


def make_cohort(slides: Path, folder: Path, copies: int) -> int:
    """Link every slide file of ``slides`` ``copies`` times into ``folder``; returns the count."""
    from xt_core.batch import collect_inputs

    count = 0
    for item in collect_inputs(slides):
        source = Path(item.path)
        for k in range(copies):
            (folder / f"c{k}-{source.name}").symlink_to(source.resolve())
            count += 1
    return count


def run_config(cohort: Path, out: Path, model: str | None, extra: list[str], env_extra: dict[str, str]) -> dict:
    """One batch in a fresh process: wall seconds, rows done and failed, load average around it."""
    cmd = [sys.executable, "-m", "xt_core.cli.main", "batch", str(cohort), "--out", str(out), "--segment",
           "--mpp", "0.5", "--quiet", *extra]
    if model:
        cmd += ["--model", model]
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.pop("XT_NUM_THREADS", None)
    env.update(env_extra)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()[0]
    if proc.returncode not in (0, 1):
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    with open(out / "summary.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    seconds = sum(float(r["seconds"]) for r in rows if r["seconds"])
    return {"wall_s": wall, "slides": len(rows), "done": sum(r["status"] == "done" for r in rows),
            "failed": sum(r["status"] == "failed" for r in rows), "slide_seconds": seconds,
            "slides_per_hour": len(rows) / wall * 3600, "load": (round(load0, 2), round(load1, 2))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slides", default=str(DEFAULT_SLIDES), help="folder of real slides (default: shared data)")
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the bundled model)")
    parser.add_argument("--copies", type=int, default=2, help="times each slide appears in the cohort (default 2)")
    parser.add_argument("--jobs", default="1,2", help="local worker counts to run (default 1,2)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration, the best is kept")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from xt_bench.reading import machine_info

    configs = [("in-process (no --scheduler)", [], {}),
               ("in-process, 1 torch thread (XT_NUM_THREADS=1)", [], {"XT_NUM_THREADS": "1"})]
    configs += [(f"--scheduler local --jobs {n}", ["--scheduler", "local", "--jobs", n], {})
                for n in args.jobs.split(",")]
    runs: dict[str, list[dict]] = {label: [] for label, _, _ in configs}
    with tempfile.TemporaryDirectory(prefix="xt-daskbench-") as tmp:
        cohort = Path(tmp) / "cohort"
        cohort.mkdir()
        total = make_cohort(Path(args.slides), cohort, args.copies)
        for r in range(args.repeats):  # interleaved, so a busy minute does not fall on one configuration only
            for k, (label, extra, env_extra) in enumerate(configs):
                print(f"running: {label} ({total} slides), run {r + 1}", file=sys.stderr, flush=True)
                runs[label].append(run_config(cohort, Path(tmp) / f"out-{k}-{r}", args.model, extra, env_extra))
    results = [(label, max(found, key=lambda run: run["slides_per_hour"])) for label, found in runs.items()]

    if args.json:
        print(json.dumps(dict(results)))
        return 0
    m = machine_info()
    first = results[0][1]
    print(f"Machine: {m['cpu_count']} CPUs, {m['processor']}, Python {m['python']}, {m['system']}; cohort: "
          f"{first['slides']} slides ({Path(args.slides).name} x {args.copies}), {first['done']} done, "
          f"{first['failed']} failed; best of {args.repeats}")
    print()
    print("| configuration | wall s | slides/hour | vs in-process | sum of per-slide s | load avg before/after |")
    print("|---|---|---|---|---|---|")
    for label, r in results:
        print(f"| {label} | {r['wall_s']:.0f} | {r['slides_per_hour']:.0f} | "
              f"{r['slides_per_hour'] / first['slides_per_hour']:.2f} | {r['slide_seconds']:.0f} | "
              f"{r['load'][0]:.1f} / {r['load'][1]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
