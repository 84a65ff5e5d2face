"""The ``anomalyd`` command: ``run``, ``replay``, ``simulate``, ``demo``, ``config`` and plugins.

Other packages add subcommands through the ``anomalyd.commands`` entry-point group (the
trainer adds ``train`` and ``evaluate``), so that ``detector`` never imports ``training``.
Each entry point is a function ``register(subparsers)`` that adds its parser and sets
``func`` to a callable taking the parsed arguments and returning an exit code.

How the command fails: a user error (a bad flag, setting, file; any :class:`AnomalydError`)
exits 2 with one line on stderr, ``anomalyd: error: <what to change>``; the host refusing
an operation (``OSError``: a full disk, a permission) exits 1 with one line; a closed pipe
on stdout (``| head``) exits 141 quietly. Anything else is a bug: a traceback, a line
saying so, exit 1. Errors from libraries are converted into
``ConfigError``/``InputError`` where they happen, with a message naming the setting or file.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import BinaryIO, cast

from detector.arguments import HelpFormatter, Parser, device, in_range
from detector.errors import AnomalydError, InputError

__all__ = ["build_parser", "main"]

log = logging.getLogger("anomalyd")
Command = Callable[[argparse.Namespace], int]

BUILTIN = ("run", "replay", "simulate", "demo", "config")  # need no plugin loaded
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_GLOBAL_WITH_VALUE = ("--log-level", "--log-format")


def _cmd_replay(args: argparse.Namespace) -> int:
    mdir: Path = args.model_dir
    if not mdir.is_dir():
        raise InputError(
            f"--model-dir {mdir} {'is a file' if mdir.exists() else 'does not exist'}: pass the "
            "model directory that `anomalyd train` published into, or one version directory in it"
        )
    out_path = None if str(args.out) == "-" else Path(args.out)
    for path in args.inputs:
        if not path.is_file():
            what = "is a directory, not a file" if path.is_dir() else "does not exist"
            raise InputError(f"{path} {what}: pass CSV or JSON Lines files of readings")
        if out_path is not None and out_path.exists() and out_path.samefile(path):
            raise InputError(f"--out {out_path} is one of the inputs: write to another file")
    from detector.artifacts import load_artifact, load_current
    from detector.config import load_settings
    from detector.core.engine import Engine
    from detector.replay import replay
    from detector.serving import present_device, with_overrides

    # The engine settings `anomalyd run` serves with (env, --config), flags over them.
    flags = {"device": "--device", "max_streams": "--max-streams", "max_gap_s": "--max-gap-s"}
    given = {k: getattr(args, k) for k in flags if getattr(args, k) is not None}
    e = load_settings(
        args.config, flag_names={f"engine.{k}": flags[k] for k in given}, engine=given
    ).engine
    device = present_device(e.device, "--device" if "device" in given else "engine.device")
    bundle = load_artifact(mdir) if (mdir / "manifest.json").is_file() else load_current(mdir)
    engine = Engine(
        with_overrides(bundle, e),
        max_streams=e.max_streams,
        device=device,
        max_gap_ms=int(e.max_gap_s * 1000) if e.max_gap_s else None,
    )
    with _output(out_path) as out:
        summary = replay(engine, args.inputs, out, bad_out=sys.stderr.buffer)
    log.info(
        "replayed %d readings with %s: %d anomalies, %d bad",
        summary.readings,
        bundle.label,
        summary.anomalies,
        summary.bad,
    )
    return 0


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[BinaryIO]:
    """stdout, or a file written whole: a temporary file beside ``path``, renamed over it
    when the replay succeeds (a failed one leaves any earlier output as it was)."""
    if path is None:
        yield sys.stdout.buffer
        return
    tmp = path.absolute().parent / f".{path.name}.{uuid.uuid4().hex}"
    try:
        f = tmp.open("xb")
    except OSError as exc:
        raise InputError(f"--out {path}: cannot write there ({exc.strerror})") from None
    try:
        yield f  # what the replay raises goes on as it is
        try:
            f.close()
            os.replace(tmp, path)
        except OSError as exc:
            raise InputError(f"--out {path}: cannot write it ({exc.strerror})") from None
    finally:
        with contextlib.suppress(OSError):  # a full disk fails the close's flush again
            f.close()
        tmp.unlink(missing_ok=True)


def _add_replay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("replay", help="score CSV/JSONL readings offline through the engine")
    p.add_argument("inputs", nargs="+", type=Path, metavar="FILE", help="CSV or JSON Lines files")
    p.add_argument(
        "--model-dir",
        "--model",  # the old spelling
        type=Path,
        required=True,
        metavar="DIR",
        help="model directory (with CURRENT) or one version directory",
    )
    p.add_argument(
        "--out", type=Path, default=Path("-"), metavar="FILE", help="output JSONL (-: stdout)"
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML settings file whose engine settings apply, as `anomalyd run`'s "
        "(default: $ANOMALYD_CONFIG_FILE, else none)",
    )
    p.add_argument(
        "--device",
        type=device,
        default=None,
        help="auto, cpu, cuda or cuda:N (default: the engine.device setting)",
    )
    p.add_argument(
        "--max-streams",
        type=in_range(int, 1),
        default=None,
        help="streams whose state is kept at once; the idlest is evicted beyond this "
        "(default: the engine.max_streams setting)",
    )
    p.add_argument(
        "--max-gap-s",
        type=in_range(float, 0.0, lo_open=True),
        default=None,
        help="restart a stream's state after a gap longer than this (default: the "
        "engine.max_gap_s setting, 3600 unless set, as for `anomalyd run`)",
    )
    p.set_defaults(func=_cmd_replay)


def _builtin() -> list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]]:
    from detector.commands import add_config, add_demo, add_run, add_simulate

    return [add_run, _add_replay, add_simulate, add_demo, add_config]


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
    except OSError as exc:  # the host's refusal (a full disk, a permission), no bug of ours
        where = f" ({exc.filename})" if exc.filename else ""
        log.debug("the host refused an operation", exc_info=True)
        print(f"anomalyd: error: {exc.strerror or exc}{where}", file=sys.stderr, flush=True)
        return 1
    except Exception:
        traceback.print_exc()
        print(
            "anomalyd: this is a bug in anomalyd; please report it with the traceback above",
            file=sys.stderr,
            flush=True,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
