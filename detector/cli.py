"""The ``anomalyd`` command: ``run``, ``replay``, ``simulate``, ``demo``, ``config`` and plugins.

Other packages add subcommands through the ``anomalyd.commands`` entry-point group (the
trainer adds ``train`` and ``evaluate``), so that ``detector`` never imports ``training``.
Each entry point is a function ``register(subparsers)`` that adds its parser and sets
``func`` to a callable taking the parsed arguments and returning an exit code.

How the command fails: a user error (a bad flag, setting, file; any :class:`AnomalydError`)
exits 2 with one line on stderr, ``anomalyd: error: <what to change>``; the host refusing
an operation (a full disk, a permission, a read-only file system) exits 1 with one line;
a closed pipe on stdout (``| head``) exits 141 quietly. Anything else is a bug: a
traceback, a line saying so, exit 1. Errors from libraries are converted into
``ConfigError``/``InputError`` where they happen, with a message naming the setting or file.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, entry_points, version
from typing import cast

from detector.arguments import HelpFormatter, Parser
from detector.errors import AnomalydError

__all__ = ["build_parser", "main"]

log = logging.getLogger("anomalyd")
Command = Callable[[argparse.Namespace], int]

BUILTIN = ("run", "replay", "simulate", "demo", "config")  # need no plugin loaded
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_GLOBAL_WITH_VALUE = ("--log-level", "--log-format")
# OSErrors that are the host's refusal, not a fault of ours nor of a dependency
_REFUSALS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO}
    | {errno.EMFILE, errno.ENFILE, errno.ENAMETOOLONG}
)


def _builtin() -> list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]]:
    from detector.commands import add_config, add_demo, add_run, add_simulate
    from detector.replaycli import add_replay

    return [add_run, add_replay, add_simulate, add_demo, add_config]


def _add_global_options(p: argparse.ArgumentParser, default: object) -> None:
    """``--log-level``/``--log-format``: on the top parser and, so that they may also come
    after the subcommand, on every subparser (there with ``SUPPRESS``, not to overwrite)."""
    if "--log-level" in p._option_string_actions:
        return
    g = p.add_argument_group("global options")
    g.add_argument(
        "--log-level",
        type=str.upper,
        choices=LEVELS,
        default=default,
        help="in any case (default: INFO; `run` reads the log.level setting)",
    )
    g.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=default,
        help="text for people, json for log pipelines (default: text; `run`: log.format)",
    )


def _parsers(p: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``p`` and all its subparsers, depth first."""
    yield p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield from _parsers(child)


def _version() -> str:
    try:
        return version("anomalyd")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser(plugins: bool = True) -> argparse.ArgumentParser:
    """The ``anomalyd`` parser; ``plugins=False`` leaves out entry-point commands (faster)."""
    parser = Parser(
        prog="anomalyd",
        description="Streaming anomaly detection for IoT sensor fleets.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"anomalyd {_version()}")
    _add_global_options(parser, None)
    # Subparsers are Parsers (one-line errors); commands take any ArgumentParser's action.
    sub = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", required=True, metavar="COMMAND"),
    )
    for add in _builtin():
        add(sub)
    for ep in sorted(entry_points(group="anomalyd.commands"), key=lambda e: e.name):
        if not plugins:
            break
        try:
            register = ep.load()
        except ImportError as exc:  # a broken plugin must not take the other commands down
            print(f"anomalyd: command {ep.name!r} unavailable: {exc}", file=sys.stderr)
            continue
        register(sub)
    for p in _parsers(parser):
        p.formatter_class = HelpFormatter
        if p is not parser:
            _add_global_options(p, argparse.SUPPRESS)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is no option or its value)."""
    words = iter(argv)
    for w in words:
        if w in _GLOBAL_WITH_VALUE:
            next(words, None)
        elif not w.startswith("-"):
            return w
    return None


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    from detector.memory import keep_freed_memory
    from detector.observability.logs import configure_logging

    keep_freed_memory()  # freed tensors' blocks reused, not faulted in afresh
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command(argv)
    plugins = command not in BUILTIN and not (command is None and "--version" in argv)
    args = build_parser(plugins=plugins).parse_args(argv)
    try:
        configure_logging(args.log_level or "INFO", args.log_format or "text")
        func: Command = args.func
        return func(args)
    except AnomalydError as exc:
        print(f"anomalyd: error: {_one_line(exc)}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `anomalyd replay ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141
    except OSError as exc:
        if exc.errno not in _REFUSALS:
            return _bug()
        # the host's refusal (a full disk, a permission), no bug of ours: one line
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"anomalyd: error: {exc.strerror}{where}", file=sys.stderr, flush=True)
        return 1
    except Exception:
        return _bug()


def _bug() -> int:
    traceback.print_exc()
    print(
        "anomalyd: this is a bug in anomalyd; please report it with the traceback above",
        file=sys.stderr,
        flush=True,
    )
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
