"""Regenerate the README's "real slides at real scale" figures: ``make bench`` (or run this file).

``xt-slide classify`` on generated dense slides at 0.5 and 0.25 um/px against the encoder alone,
and classify/segment/info on a 98,304 x 81,920 px slide of needle cores against a 4,096 px one
(see xt_bench.scale). Prints the JSON, then the Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys

from xt_bench.scale import markdown, run_all


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--side", type=int, default=16384, help="side of the dense 0.5 um/px slide (px)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    result = run_all(repeats=args.repeats, side=args.side, progress=lambda t: print(t, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=1, default=str))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
