"""Times and durations on ``anomalyd train``'s command line: ``--every``, ``--from``, ``--to``."""

from __future__ import annotations

import argparse
import re

from detector.core.timefmt import parse_ts
from detector.errors import ConfigError

__all__ = ["duration_arg", "parse_duration", "time_arg", "time_ms"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> float:
    """Seconds from ``90s``, ``15m``, ``6h``, ``7d``, ``2w`` (or a bare number of seconds)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m:
        raise ConfigError(f"{text!r} is not a duration: use e.g. 90s, 15m, 6h, 7d, 2w")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def time_ms(text: str | None, now_ms: int) -> int:
    """ISO-8601 / epoch ms, or a duration meaning that long before now."""
    if text is None:
        return now_ms
    ts = parse_ts(text)
    if ts is not None and not re.fullmatch(r"\d+(\.\d+)?[smhdw]", text):
        return ts
    return now_ms - int(parse_duration(text) * 1000)


def duration_arg(text: str) -> str:
    """An argparse ``type`` for ``--every``: checked here, parsed where used."""
    try:
        seconds = parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:  # would retrain back to back, for ever
        raise argparse.ArgumentTypeError(f"{text!r} is no period: use e.g. 6h or 1d")
    return text


def time_arg(text: str) -> str:
    """An argparse ``type`` for ``--from``/``--to``: checked here, resolved at each run."""
    try:
        time_ms(text, 0)
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use ISO 8601, epoch ms or an age such as 7d"
        ) from None
    return text
