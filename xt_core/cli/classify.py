"""``xt-slide classify SLIDE...``: a slide-level label per slide, one JSON record each.

Writes ``<out>/<slide name>.json`` and prints one line per slide (``--json``: the records as
JSON lines on stdout, nothing else there). On a terminal a progress bar follows each slide's
regions on stderr (none with ``--quiet`` or when stderr is not a terminal). A slide that fails gives one ``error:`` line on
stderr; the others still run, and the exit code is 2 if any failed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from xt_core.cli._options import (
    add_model_options,
    add_output_options,
    add_slide_options,
    print_error,
    settings_from_args,
    slide_line,
)
from xt_core.progress import RegionProgress


def add_parser(sub, name: str, parents) -> None:
    p = sub.add_parser(name, parents=parents, help="slide-level class probabilities, one JSON record per slide")
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files")
    add_common(p)
    p.set_defaults(run=run)


def add_common(p: argparse.ArgumentParser) -> None:
    add_model_options(p)
    add_slide_options(p)
    p.add_argument("--out", default=".", metavar="DIR", help="folder for the outputs (default: here)")
    add_output_options(p)


def run(args: argparse.Namespace, segment: bool = False) -> int:
    from xt_core import api
    from xt_core.errors import XTError
    from xt_core.inference import resolve_device

    settings = settings_from_args(args)
    model = api.resolve_model(args.model)  # once for all slides
    resolve_device(settings.device)
    work = api.segment_slide if segment else api.classify_slide
    failed = 0
    for path in args.slides:
        bar = RegionProgress(Path(path).name, enabled=not args.quiet)
        try:
            record = work(path, model, out_dir=args.out, settings=settings, progress=bar.update)
        except XTError as exc:
            bar.close()
            print_error(exc, args.debug)
            failed += 1
            continue
        bar.close()
        if args.json:
            print(json.dumps(record), flush=True)
        elif not args.quiet:
            files = ", ".join(str(Path(args.out) / name) for name in record["outputs"].values())
            print(f"{slide_line(record)} -> {files}", flush=True)
    return 2 if failed else 0
