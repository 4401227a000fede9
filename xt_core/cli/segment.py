"""``xt-slide segment SLIDE...``: classify, and write the segmentation of each slide.

Per slide, in ``--out``: ``<name>.heatmap.ome.tif`` (tiled pyramidal OME-TIFF at its physical
pixel size: per-class probabilities, or argmax labels with ``--labels``), ``<name>.preview.png``
(thumbnail, coloured classes, legend), ``<name>.geojson`` (class polygons QuPath opens as
annotations) and ``<name>.json`` (the record, as ``classify`` writes it, written last).
"""

from __future__ import annotations

import argparse

from xt_core.cli import classify
from xt_core.cli._options import add_segment_options


def add_parser(sub, name: str, parents) -> None:
    p = sub.add_parser(name, parents=parents,
                       help="heatmap OME-TIFF, PNG preview and QuPath GeoJSON per slide (and the JSON record)")
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files")
    classify.add_common(p)
    add_segment_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return classify.run(args, segment=True)
