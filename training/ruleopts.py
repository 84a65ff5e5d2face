"""``anomalyd train``'s detection-rule options and the scoring they ask for."""

from __future__ import annotations

import argparse
from dataclasses import replace

from detector.arguments import in_range
from detector.core.rules import SustainConfig
from detector.core.scoring import ScoringConfig
from training.pipeline import DEFAULT_OWN_SPREAD, DEFAULT_SCORING, DEFAULT_SPAN, LEVEL, SHIFT

__all__ = ["add_rule_options", "base_scoring"]


def add_rule_options(p: argparse.ArgumentParser) -> None:
    """The options that turn the rules on or off (each rule's defaults: DEFAULT_SCORING)."""
    p.add_argument(
        "--sustain",
        type=in_range(int, 0),
        default=DEFAULT_SPAN,
        help="readings over which a same-signed error counts as sustained (0: rule off)",
    )
    p.add_argument(
        "--own-spread",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_OWN_SPREAD,
        help="the sustained rule judges each stream against its own spread of the average "
        "(the fleet's calibrated spread is its prior); --no-own-spread: the fleet's for all",
    )
    p.add_argument(
        "--own-scale",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_SCORING.own_scale,
        help="judge each stream's errors against its own spread of them (the fleet's is its "
        "prior); --no-own-scale: the fleet's for all (docs/quality.md, session 17)",
    )
    p.add_argument(
        "--shift",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the shift rule: a channel whose level leaves where the stream's other channels "
        "put it (2 to 64 features; F² floats of state per stream; docs/quality.md, "
        "sessions 9-11)",
    )
    p.add_argument(
        "--level",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the level rule: a channel whose level, given the stream's other channels, "
        "leaves its own recent course, whitened in time (2 to 64 features; F² + 18F floats "
        "of state per stream; docs/quality.md, sessions 44-46)",
    )
    p.add_argument(
        "--spike",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the spike rule: a value that jumps and comes back (two opposite-signed errors "
        "in a row; docs/quality.md, session 16)",
    )
    p.add_argument(
        "--difference",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the difference rule: a channel's change (over one reading or five) far beyond "
        "the stream's usual ones, no model (docs/quality.md, session 26)",
    )
    p.add_argument(
        "--context",
        type=_context,
        default="auto",
        metavar="auto|none|NAME[,NAME..]",
        help="channels the model reads and no rule judges: auto (those that barely move "
        "between a few states, like commands, flags, modes; docs/training.md), none, or "
        "their names",
    )
    p.add_argument(
        "--held",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="held channels: a channel that repeats its last value in 80%% of its changes "
        "or more, with many values (a sensor polled faster than it updates), is judged at "
        "its new values and not at its repeats (docs/training.md)",
    )
    p.add_argument(
        "--pseudo-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="read a channel whose values have a heavy right tail (skewness over 2 in most "
        "streams, like request rates or latencies) through asinh((value - m) / c), m and c "
        "its typical value and spread "
        "(docs/training.md)",
    )
    p.add_argument(
        "--sizes",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="read each stream at the fleet's size where a channel's typical change spans "
        "more than 3x over the streams (machines of one kind in many sizes): its level and "
        "changes measured over its first readings (docs/training.md)",
    )


def _context(text: str) -> str | tuple[str, ...]:
    if text in ("auto", "none"):
        return text
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("give auto, none or feature names separated by commas")
    return names


def base_scoring(args: argparse.Namespace) -> ScoringConfig:
    """DEFAULT_SCORING with the rules ``args`` turned off left out."""
    return replace(
        DEFAULT_SCORING,
        sustained=SustainConfig(args.sustain, own=args.own_spread) if args.sustain else None,
        shift=SHIFT if args.shift else None,
        level=LEVEL if args.level else None,
        spike=DEFAULT_SCORING.spike if args.spike else None,
        difference=DEFAULT_SCORING.difference if args.difference else None,
        own_scale=args.own_scale,
    )
