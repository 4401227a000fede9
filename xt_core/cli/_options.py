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


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1: {text!r}")
    return value


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Which model, where it runs, and how slides stream through it."""
    parser.add_argument("--model", default=None, metavar="PATH",
                        help="checkpoint folder (model.safetensors + config.json); default: the bundled model")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where the model runs (default: auto, CUDA when there is a GPU)")
    parser.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                        help="regions per forward pass (default: 0.4 megapixels' worth, 8 regions of 224 px; "
                             "32 runs the encoder 20%% faster for about 350 MB more memory)")
    parser.add_argument("--workers", type=non_negative_int, default=2, metavar="N",
                        help="reader threads decoding regions ahead of the model (default 2)")
    parser.add_argument("--target-mpp", type=positive_float, default=None, metavar="X",
                        help="working resolution in microns per pixel (default: the model's)")
    parser.add_argument("--tissue-threshold", type=fraction, default=None, metavar="T",
                        help="tissue fraction a region needs to be analysed (default: the model's)")


def add_dask_options(parser: argparse.ArgumentParser) -> None:
    """Where a batch runs: in this process (default) or on Dask workers."""
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="run the slides on Dask workers: a scheduler's address (tcp://host:port), or 'local' to "
                             "start worker processes on this machine (needs: pip install 'napari-xt[dask]')")
    parser.add_argument("--jobs", type=positive_int, default=None, metavar="N",
                        help="with --scheduler local: N worker processes, one slide each at a time "
                             "(default: one per GPU, else one per 4 cores)")


def add_segment_options(parser: argparse.ArgumentParser) -> None:
    """What segmentation writes: heatmap kind, polygon threshold, preview size."""
    parser.add_argument("--labels", action="store_true",
                        help="heatmap OME-TIFF of argmax labels (0 background, 1..C classes) instead of probabilities")
    parser.add_argument("--threshold", type=fraction, default=0.5, metavar="P",
                        help="GeoJSON polygons where a class's probability is above P (default 0.5)")
    parser.add_argument("--preview-size", type=positive_int, default=1024, metavar="PX",
                        help="longer side of the PNG preview's thumbnail (default 1024)")


def settings_from_args(args: argparse.Namespace):
    """The one :class:`~xt_core.settings.RunSettings` of a command, from its parsed flags.

    Options a command does not have keep their defaults (``info`` has no ``--device``).
    """
    from dataclasses import fields

    from xt_core.settings import RunSettings

    given = {f.name: getattr(args, f.name) for f in fields(RunSettings) if hasattr(args, f.name)}
    return RunSettings(**given)


#: The CLI's own remedy for engine errors that have one (the engine words it without flags).
def _cli_fixes() -> dict[type, str]:
    from xt_core.errors import MissingMppError, NoDefaultModelError, NoTissueError

    return {
        MissingMppError: "pass --mpp with the scanner's value, e.g. 0.25 for 40x or 0.5 for 20x",
        NoTissueError: "lower --tissue-threshold to analyse it anyway",
        NoDefaultModelError: "pass --model PATH (a checkpoint folder)",
    }


def error_line(exc: BaseException) -> str:
    """``error: <path>: <reason>[; <fix>]``, the fix in the command line's words."""
    from xt_core.errors import XTError

    if not isinstance(exc, XTError):
        return f"error: internal error ({type(exc).__name__}): {exc}"
    fix = next((text for kind, text in _cli_fixes().items() if isinstance(exc, kind)), None)
    if fix is not None and getattr(exc, "reason", None) is not None:
        return f"error: {exc.path}: {exc.reason}; {fix}"
    return f"error: {exc}"


def print_error(exc: BaseException, debug: bool, write=None) -> None:
    """One :func:`error_line` on stderr (the traceback first with ``--debug``)."""
    import sys
    import traceback

    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    line = error_line(exc)
    if write is not None:
        write(line)
    else:
        print(line, file=sys.stderr)


def slide_line(record: dict) -> str:
    """One human line about a finished slide."""
    probs = record.get("probabilities") or {}
    pred = record.get("prediction")
    what = f"{pred} ({probs[pred]:.3f})" if pred in probs else "no slide-level prediction"
    regions = record.get("regions") or {}
    wall = (record.get("timing") or {}).get("wall")
    line = f"{record['slide']}: {what}; {regions.get('tissue')}/{regions.get('total')} regions analysed"
    if wall is not None:
        line += f"; {wall:.1f} s"
    return line
