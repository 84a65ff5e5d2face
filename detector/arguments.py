"""What every ``anomalyd`` subcommand's parser shares: one-line errors, help that shows
each default, and argparse ``type`` functions whose errors say what is allowed."""

from __future__ import annotations

import argparse
import copy
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

__all__ = [
    "SEED_MAX",
    "HelpFormatter",
    "Parser",
    "device",
    "in_range",
    "names",
    "out_dir",
    "out_file",
    "processes",
]

Number = TypeVar("Number", int, float)
SEED_MAX = 2**63 - 1  # torch's seeds are 64-bit signed


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: what is wrong, and where to read more."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, and one spelling per option.

    The default is left out where the help text already says it, for switches and for
    ``None`` (the help then says where the value comes from). Long spellings after the
    first are old names kept so that scripts keep working; help shows only the first.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "default" in text
            or action.nargs == 0
            or action.default is None
            or action.default == argparse.SUPPRESS
            or action.default == []
        ):
            return text
        return f"{text} (default: %(default)s)"

    def _format_action_invocation(self, action: argparse.Action) -> str:
        longs = [s for s in action.option_strings if s.startswith("--")]
        if len(longs) > 1:
            action = copy.copy(action)
            action.option_strings = [s for s in action.option_strings if s not in longs[1:]]
        return super()._format_action_invocation(action)


def in_range(
    kind: Callable[[str], Number],
    lo: Number | None = None,
    hi: Number | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> Callable[[str], Number]:
    """An argparse ``type``: a finite number of ``kind`` within bounds, else a one-line error.

    >>> in_range(int, 1)("3")
    3
    """
    bounds = []
    if lo is not None:
        bounds.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        bounds.append(f"{'<' if hi_open else '<='} {hi}")
    want = " ".join(["an integer" if kind is int else "a number", " and ".join(bounds)]).strip()

    def parse(text: str) -> Number:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {want}") from None
        bad = not math.isfinite(v)
        bad |= lo is not None and (v <= lo if lo_open else v < lo)
        bad |= hi is not None and (v >= hi if hi_open else v > hi)
        if bad:
            raise argparse.ArgumentTypeError(f"{text!r} is not {want}")
        return v

    return parse


def device(text: str) -> str:
    """An argparse ``type``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if text in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a device: use auto, cpu, cuda or cuda:N")


def out_dir(text: str) -> Path:
    """An argparse ``type``: a directory to write into, made where missing; not a file
    (found now, not after the work whose results it would hold)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a directory")
    # Where it is missing, the nearest existing folder above must be one this user can
    # write in: a file on the way or a read-only folder would fail only at the end.
    there = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not there.is_dir():
        raise argparse.ArgumentTypeError(f"cannot make {text!r}: {str(there)!r} is a file")
    if not os.access(there, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write in {str(there)!r}: no permission")
    return path


def out_file(text: str) -> Path:
    """An argparse ``type``: a file to write; not an existing directory."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, not a file")
    return Path(text)


def names(text: str) -> tuple[str, ...]:
    """An argparse ``type``: distinct, non-empty names separated by commas.

    >>> names("temp, vibration")
    ('temp', 'vibration')
    """
    out = tuple(n.strip() for n in text.split(","))
    if not all(out) or len(set(out)) < len(out):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not distinct names separated by commas, e.g. temp,vibration"
        )
    return out


def feature_names(text: str) -> tuple[str, ...]:
    """An argparse ``type``: :func:`names` that are no reading's time or stream (a column
    ``ts`` taken as a feature was trained on; ``stream_id`` refused every row)."""
    out = names(text)
    if meta := [n for n in out if n in ("ts", "timestamp", "stream_id")]:
        raise argparse.ArgumentTypeError(
            f"{', '.join(meta)}: a reading's time or stream, not a feature; name its channels"
        )
    return out


def processes(text: str) -> int | str:
    """An argparse ``type``: a whole number of processes >= 1, or ``auto`` (one per core).

    >>> processes("2"), processes("auto")
    (2, 'auto')
    """
    if text.strip().lower() == "auto":
        return "auto"
    if text.strip().isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a number of processes: use a whole number >= 1, or auto"
    )
