"""``xt-slide batch (MANIFEST.csv | DIR | GLOB)... --out DIR``: many slides, one model load.

Writes every slide's outputs (as ``classify``, or ``segment`` with ``--segment``) and
``<out>/summary.csv`` (slide, status, prediction, p_<class>..., seconds, error), rewritten after
every slide. A bad slide is a ``failed`` row and the batch goes on. ``--resume`` skips slides
whose outputs are complete. ``--scheduler ADDRESS`` runs the slides on Dask workers
(``--scheduler local --jobs N``: N worker processes on this machine) with the same outputs.
Exit codes: 0 all done, 1 some slides failed, 2 nothing could start (bad options, no slides, no
model, no scheduler) or the scheduler went away (the summary marks the unfinished slides
``interrupted``), 130 interrupted (Ctrl-C; run again with ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import sys

from xt_core.cli._options import (
    add_dask_options,
    add_model_options,
    add_output_options,
    add_segment_options,
    add_slide_options,
    print_error,
    settings_from_args,
)


def add_parser(sub, name: str, parents) -> None:
    p = sub.add_parser(name, parents=parents, help="classify (and segment) many slides, with a summary CSV")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="a manifest CSV (columns slide or path, optional mpp), a folder, a glob, or slide files")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the outputs and summary.csv")
    p.add_argument("--segment", action="store_true", help="also write heatmap OME-TIFF, PNG preview and GeoJSON")
    p.add_argument("--resume", action="store_true", help="skip slides whose outputs are already complete")
    add_dask_options(p)
    add_model_options(p)
    add_slide_options(p)
    add_segment_options(p)
    add_output_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from xt_core.batch import BatchInterrupted, run_batch

    def report(row, record, error) -> None:
        if error is not None:
            print_error(error, args.debug, write=lambda line: tqdm.write(line, file=sys.stderr))

    try:
        summary = run_batch(args.inputs, args.out, model=args.model, segment=args.segment, resume=args.resume,
                            settings=settings_from_args(args), progress=not args.quiet, on_slide=report,
                            scheduler=args.scheduler, jobs=args.jobs)
    except BatchInterrupted as stop:
        summary = stop.summary
        print(f"interrupted: {summary.done} of {len(summary.rows)} slides done; summary in {summary.summary_path}; "
              "run again with --resume to finish", file=sys.stderr)
        return summary.exit_code
    if args.json:
        for row in summary.rows:
            print(json.dumps(row), flush=True)
    elif not args.quiet:
        extra = f", {summary.resumed} already done" if summary.resumed else ""
        print(f"{summary.done} of {len(summary.rows)} slides done, {summary.failed} failed{extra}; "
              f"summary: {summary.summary_path}", flush=True)
    return summary.exit_code
