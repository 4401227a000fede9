"""``xt-slide tissue SLIDE --out PNG``: detect tissue and draw it on the thumbnail."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from xt_core.cli._options import add_slide_options, positive_int


def add_parser(sub, name: str, parents) -> None:
    p = sub.add_parser(name, parents=parents, help="tissue mask and a thumbnail PNG with it drawn on")
    p.add_argument("slide")
    add_slide_options(p)
    p.add_argument("--out", default=None, help="PNG to write (default: <slide name>.tissue.png here)")
    p.add_argument("--size", type=positive_int, default=1024, help="thumbnail's longer side in pixels")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def write_tissue_preview(path: str, out: str | None = None, size: int = 1024, backend: str = "auto",
                         mpp: float | None = None, force_mpp: bool = False) -> dict:
    """Detect tissue on ``path`` and write the overlay PNG; returns what was found and written."""
    from xt_core.outputs import save_png, tissue_overlay
    from xt_core.slide import open_slide
    from xt_core.tissue import tissue_mask

    with open_slide(path, backend=backend, mpp=mpp, force_mpp=force_mpp) as slide:
        tissue = tissue_mask(slide)
        thumb = slide.get_thumbnail(size)
        target = Path(out) if out else Path(f"{slide.name}.tissue.png")
        save_png(target, tissue_overlay(thumb, tissue.mask))
    return {"slide": str(path), "tissue_fraction": round(tissue.fraction, 4), "png": str(target)}


def run(args: argparse.Namespace) -> int:
    record = write_tissue_preview(args.slide, args.out, args.size, args.backend, args.mpp, args.force_mpp)
    if args.json:
        print(json.dumps(record))
    else:
        print(f"{record['slide']}: tissue {record['tissue_fraction'] * 100:.1f}% -> {record['png']}")
    return 0
