"""``xt-slide`` entry point: parse, dispatch, and turn errors into one line and an exit code.

Exit codes: 0 done; 1 a batch finished with failed slides; 2 usage errors and failed
single-slide commands. ``--debug`` adds the traceback to an error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn, Sequence

from xt_core import __version__
from xt_core.cli._options import print_error

EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR = 0, 1, 2


def _commands():
    # Imported here so `xt-slide --help` stays fast and each command owns its imports.
    from xt_core.cli import (
        batch,
        bench,
        classify,
        evaluate,
        info,
        segment,
        tissue,
        train,
    )

    return {"info": info, "tissue": tissue, "bench": bench, "classify": classify, "segment": segment, "batch": batch, "train": train, "evaluate": evaluate}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xt-slide",
        description="Whole-slide images with xT: inspect, detect tissue, benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in _commands().items():
        module.add_parser(sub, name, parents=[common])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from xt_core import runtime

    runtime.prepare_process()  # before any command imports torch (see xt_core/runtime.py)
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors, as argparse does
    try:
        return int(args.run(args) or EXIT_OK)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `xt-slide ... --json | head`: the reader left; stop quietly, as a shell tool does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the final flush has somewhere to go
        return 128 + 13  # the status a shell reports for SIGPIPE
    except Exception as exc:  # XTError: bad input; anything else a bug; one line either way unless --debug
        print_error(exc, args.debug)
        return EXIT_ERROR


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` without tearing the interpreter down.

    Once a command has returned, its outputs are written and closed (every file goes through a
    temporary name and a rename inside the command), its reader threads and any Dask cluster
    are shut down, and nothing is left to do but free memory the system takes back anyway.
    Python's own shutdown, which unloads torch, timm and torchvision module by module, costs
    about 0.5 s on the reference machine: a fifth of the fixed cost of ``xt-slide classify``.
    So the streams and logging are flushed and the process ends with ``os._exit``.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (``| head``) or a closed stream
            pass
    os._exit(code)


def run() -> NoReturn:
    """The ``xt-slide`` console script: :func:`main` on the command line, then :func:`exit_now`."""
    exit_now(main())


if __name__ == "__main__":  # pragma: no cover
    run()
