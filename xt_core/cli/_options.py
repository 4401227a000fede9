"""Options shared by several commands, defined once."""

from __future__ import annotations

import argparse


def add_slide_options(parser: argparse.ArgumentParser) -> None:
    """How to open a slide: backend and pixel size."""
    parser.add_argument(
        "--backend", default="auto", choices=["auto", "openslide", "tiffslide", "image"],
        help="reader library (default: auto, the one that sees the full pyramid)",
    )
    parser.add_argument(
        "--mpp", type=_positive_float, default=None,
        help="the slide's microns per pixel, for files whose header has none",
    )
    parser.add_argument(
        "--force-mpp", action="store_true",
        help="use --mpp even where the slide's header has a pixel size",
    )


def add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON on stdout and nothing else there")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


positive_float = _positive_float


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value
