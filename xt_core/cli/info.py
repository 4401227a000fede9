"""``xt-slide info SLIDE``: what a slide is (levels, size, pixel size, reader, tissue)."""

from __future__ import annotations

import argparse
import json

from xt_core.cli._options import add_slide_options


def add_parser(sub, name: str, parents) -> None:
    p = sub.add_parser(name, parents=parents, help="levels, dimensions, mpp, vendor, backend, tissue fraction")
    p.add_argument("slide", help="slide file (SVS, NDPI, TIFF/OME-TIFF, MRXS, PNG, JPEG, ...)")
    add_slide_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-tissue", action="store_true", help="skip tissue detection")
    p.set_defaults(run=run)


def slide_info(path: str, backend: str = "auto", mpp: float | None = None,
               force_mpp: bool = False, tissue: bool = True) -> dict:
    """The record ``xt-slide info`` prints: the slide's metadata plus its tissue fraction."""
    from xt_core.slide import open_slide
    from xt_core.tissue import tissue_mask

    with open_slide(path, backend=backend, mpp=mpp, force_mpp=force_mpp) as slide:
        record = slide.info()
        record["tissue_fraction"] = round(tissue_mask(slide).fraction, 4) if tissue else None
    return record


def run(args: argparse.Namespace) -> int:
    record = slide_info(args.slide, args.backend, args.mpp, args.force_mpp, tissue=not args.no_tissue)
    if args.json:
        print(json.dumps(record))
        return 0
    print(format_info(record))
    return 0


def format_info(record: dict) -> str:
    """A human-readable block."""
    mpp = record["mpp"]
    source = record.get("mpp_source")
    if mpp:
        mpp_text = f"{mpp[0]:.4f} x {mpp[1]:.4f} um/px ({source})"
    elif source:  # e.g. "none (header says 96 dpi = 264.6 um/px, a screen/print default)"
        mpp_text = f"unknown (pass --mpp): {source}"
    else:
        mpp_text = "unknown (pass --mpp)"
    lines = [
        f"slide:      {record['path']}",
        f"backend:    {record['backend']}",
        f"vendor:     {record['vendor'] or 'unknown'}",
        f"mpp:        {mpp_text}",
        f"objective:  {record['objective_power'] or 'unknown'}",
        f"levels:     {record['level_count']}",
    ]
    for i, ((w, h), ds) in enumerate(zip(record["level_dimensions"], record["level_downsamples"])):
        lines.append(f"  level {i}:  {w} x {h}  (downsample {ds:.3f})")
    lines.append(f"associated: {', '.join(record['associated_images']) or 'none'}")
    if record.get("tissue_fraction") is not None:
        lines.append(f"tissue:     {record['tissue_fraction'] * 100:.1f}% of the slide")
    return "\n".join(lines)
