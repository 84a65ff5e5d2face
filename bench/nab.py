"""Detection quality on NAB, as a benchmark script printing JSON (see docs/quality.md).

    python bench/nab.py --data ../shared/datasets/nab --out out/nab

The same as ``anomalyd evaluate nab --json``; kept here so that ``bench/`` lists every
published figure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.evaluate import register


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/nab.py")
    register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "nab", "--json", *sys.argv[1:]])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
