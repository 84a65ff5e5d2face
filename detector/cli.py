"""The ``anomalyd`` command: ``run``, ``replay``, ``simulate``, ``demo`` and plugin commands.

Other packages add subcommands through the ``anomalyd.commands`` entry-point group (the
trainer adds ``train`` and ``evaluate``), so that ``detector`` never imports ``training``.
Each entry point is a function ``register(subparsers)`` that adds its parser and sets
``func`` to a callable taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path

from detector.errors import AnomalydError

__all__ = ["main"]

log = logging.getLogger("anomalyd")
Command = Callable[[argparse.Namespace], int]


def _cmd_replay(args: argparse.Namespace) -> int:
    from detector.artifacts import load_artifact, load_current
    from detector.core.engine import Engine

    mdir: Path = args.model
    bundle = load_artifact(mdir) if (mdir / "manifest.json").is_file() else load_current(mdir)
    engine = Engine(
        bundle,
        max_streams=args.max_streams,
        device=args.device,
        max_gap_ms=int(args.max_gap_s * 1000) if args.max_gap_s else None,
    )
    from detector.replay import replay

    out = sys.stdout.buffer if str(args.out) == "-" else args.out.open("wb")
    try:
        summary = replay(engine, args.inputs, out, bad_out=sys.stderr.buffer)
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    log.info(
        "replayed %d readings with %s: %d anomalies, %d bad",
        summary.readings,
        bundle.label,
        summary.anomalies,
        summary.bad,
    )
    return 0


def _add_replay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("replay", help="score CSV/JSONL readings offline through the engine")
    p.add_argument("inputs", nargs="+", type=Path, help="CSV or JSON Lines files")
    p.add_argument(
        "--model",
        type=Path,
        required=True,
        help="model directory (with CURRENT) or one version directory",
    )
    p.add_argument("--out", type=Path, default=Path("-"), help="output JSONL (default stdout)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--max-streams", type=int, default=1_000_000)
    p.add_argument(
        "--max-gap-s",
        type=float,
        default=None,
        help="restart a stream's state after a gap longer than this",
    )
    p.set_defaults(func=_cmd_replay)


def _builtin() -> list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]]:
    from detector.commands import add_demo, add_run, add_simulate

    return [add_run, _add_replay, add_simulate, add_demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomalyd", description="Streaming anomaly detection for IoT sensor fleets."
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument("--log-format", default=None, choices=["text", "json"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _builtin():
        add(sub)
    for ep in sorted(entry_points(group="anomalyd.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as exc:  # a broken plugin must not take the other commands down
            print(f"anomalyd: command {ep.name!r} unavailable: {exc}", file=sys.stderr)
            continue
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from detector.observability.logs import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging(args.log_level or "INFO", args.log_format or "text")
    func: Command = args.func
    try:
        return func(args)
    except AnomalydError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
