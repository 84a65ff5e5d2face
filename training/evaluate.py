"""``anomalyd evaluate``: detection quality on a benchmark, through the live engine."""

from __future__ import annotations

import argparse

from training.fleet import evaluate as fleet
from training.nab import evaluate as nab
from training.skab import evaluate as skab

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``evaluate`` (with its benchmark subcommands) to the ``anomalyd`` command."""
    p = sub.add_parser("evaluate", help="measure detection quality on a benchmark")
    bench = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    nab.add_parser(bench)
    fleet.add_parser(bench)
    skab.add_parser(bench)
