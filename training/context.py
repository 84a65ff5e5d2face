"""Context channels: the ones a model reads and no rule judges.

Public multivariate benchmarks and real plants carry channels that barely move: a command
or a flag (0, and 1 for a few readings now and then), a mode or a setpoint (one value for
hundreds of readings, then another), a constant. Their rare switches are events, not
noise: no model forecasts when an operator sends a command. Judged, each switch is the
largest error of the history, and since every rule takes the largest over a stream's
channels, those switches set every rule's threshold for the *other* channels too: on a
simulated fleet with four such channels beside its own the error threshold went from ~6
to 36 and recall from 0.97 to 0.14 (docs/quality.md, session 31). Read as context they
still inform the forecast of the channels that are judged (a command that moves a valve).

A channel is context when at least :data:`STILL_SHARE` of its one-step changes over the
whole history are exactly zero, but not all of them, and it moves between a few states:
no stream's history holds more than :data:`MAX_LEVELS` distinct values of it, or it rests
at one value (each stream's most common) for :data:`REST_SHARE` of its readings and leaves
it only in bursts (a disk's write rate: 0, then a burst through many values). A channel
that never moved sets no threshold (its errors are 0) and stays judged, so that it errs
the moment it moves. A sensor a gateway polls faster than it updates (a value held for
ten readings, then a new one) is as still but takes hundreds of values and rests at none:
it is a *held* channel (:func:`held_channels`, :mod:`detector.core.held`), judged at its
updates and not at its repeats. The simulated styles' channels stay far below either share
(at most 0.37, a quantised channel of the mixed style), so their models are as before.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from detector.artifacts import load_current
from detector.core.held import repeats
from detector.core.scoring import ScoringConfig
from detector.errors import ArtifactError
from training.data import StreamSeries

__all__ = [
    "HELD_SHARE",
    "MAX_LEVELS",
    "REST_SHARE",
    "STILL_SHARE",
    "choose_context",
    "context_channels",
    "held_channels",
    "judged_only",
    "served_scoring",
    "shift_view",
    "states",
    "still_shares",
    "warn_if_context_changes",
]

log = logging.getLogger(__name__)

STILL_SHARE = 0.9
MAX_LEVELS = 8  # a command, a flag, a mode: a few states, not a measured quantity
REST_SHARE = 0.9  # ... or one state it rests in, left in bursts
HELD_SHARE = 0.8  # a sensor polled 5 times or more per update (below: see held_channels)


def still_shares(series: Sequence[StreamSeries], features: int) -> np.ndarray:
    """(F,) per channel, the share of its one-step changes (consecutive readings both given,
    over every stream) that are exactly zero; 0 for a channel never given twice in a row."""
    zero = np.zeros(features, np.int64)
    pairs = np.zeros(features, np.int64)
    for s in series:
        v = s.values
        if len(v) < 2:
            continue
        both = ~np.isnan(v[1:]) & ~np.isnan(v[:-1])
        pairs += both.sum(axis=0)
        zero += (both & (v[1:] == v[:-1])).sum(axis=0)
    return np.where(pairs > 0, zero / np.maximum(pairs, 1), 0.0)


def states(series: Sequence[StreamSeries], features: int) -> tuple[np.ndarray, np.ndarray]:
    """(F,) per channel, the most distinct values one stream's history gives it, and the
    share of all readings given that equal their stream's most common value of it."""
    most = np.zeros(features, np.int64)
    rest = np.zeros(features, np.int64)
    given = np.zeros(features, np.int64)
    for s in series:
        for f in range(features):
            col = s.values[:, f]
            _, counts = np.unique(col[~np.isnan(col)], return_counts=True)
            most[f] = max(most[f], len(counts))
            rest[f] += counts.max(initial=0)
            given[f] += counts.sum()
    return most, np.where(given > 0, rest / np.maximum(given, 1), 0.0)


def context_channels(
    series: Sequence[StreamSeries], features: Sequence[str], share: float = STILL_SHARE
) -> tuple[int, ...]:
    """The channels that barely move in ``series``, between a few values (a warning names
    them), or () when that would leave no channel to judge: still channels alone are
    judged as usual."""
    still = still_shares(series, len(features))
    most, rest = states(series, len(features))
    few = (most <= MAX_LEVELS) | (rest >= REST_SHARE)
    context = tuple(int(i) for i in np.flatnonzero((still >= share) & (still < 1.0) & few))
    if not context or len(context) == len(features):
        return ()
    log.warning(
        "%d channel(s) barely move in the history (%s of their changes are 0): they switch "
        "between at most %d values or rest at one %.0f %% of the time, like commands, flags, "
        "modes or bursts; the model reads them, no rule judges them",
        len(context),
        ", ".join(f"{features[i]} {100 * still[i]:.1f} %" for i in context),
        MAX_LEVELS,
        100 * REST_SHARE,
    )
    return context


def choose_context(
    series: Sequence[StreamSeries], features: Sequence[str], how: str | Sequence[str] = "auto"
) -> tuple[int, ...]:
    """``how``: "auto" (:func:`context_channels`), "none" (every channel judged) or the
    names of the channels to read as context; a ValueError says what is wrong with them."""
    if isinstance(how, str) and how in ("auto", "none"):
        return context_channels(series, features) if how == "auto" else ()
    names = [how] if isinstance(how, str) else list(how)
    unknown = [n for n in names if n not in features]
    if unknown:
        raise ValueError(
            f"no feature named {', '.join(unknown)} for --context; the features are "
            f"{', '.join(features)} (or give auto or none)"
        )
    context = tuple(sorted({features.index(n) for n in names}))
    if len(context) == len(features):
        raise ValueError("--context names every feature: leave at least one to judge")
    if context:
        log.info("context channels as given: %s", ", ".join(features[i] for i in context))
    return context


def served_scoring(model_dir: Path, features: Sequence[str]) -> ScoringConfig | None:
    """The scoring of the model served from ``model_dir`` when it serves ``features``: what
    a retrain is compared with (None: nothing, or something else, is served)."""
    try:
        served = load_current(model_dir)
    except ArtifactError:
        return None
    return served.scoring if served.features == tuple(features) else None


def warn_if_context_changes(
    served: ScoringConfig | None,
    features: Sequence[str],
    context: tuple[int, ...],
    held: tuple[int, ...] = (),
) -> None:
    """Warn when the ``served`` model (:func:`served_scoring`) reads other context (or
    held) channels: loaded, the new version starts every stream afresh once
    (Bundle.state_compatible)."""
    if served is None:
        return
    if served.held != held:
        log.warning(
            "held channels change from the served model's (%s) to %s: every stream starts "
            "afresh once when this version goes live (--no-held: none)",
            ", ".join(features[i] for i in served.held) or "none",
            ", ".join(features[i] for i in held) or "none",
        )
    if served.context == context:
        return
    name = ", ".join(features[i] for i in context) or "none"
    was = ", ".join(features[i] for i in served.context) or "none"
    log.warning(
        "context channels change from the served model's (%s) to %s: every stream starts "
        "afresh once when this version goes live; --context %s keeps the served ones",
        was,
        name,
        ",".join(features[i] for i in served.context) or "none",
    )


def held_channels(
    series: Sequence[StreamSeries],
    features: Sequence[str],
    context: Sequence[int] = (),
    share: float = HELD_SHARE,
) -> tuple[int, ...]:
    """The channels, other than ``context``, that repeat their last value in at least
    ``share`` of their one-step changes, but not in all, and take many values (more than
    :data:`MAX_LEVELS` in a stream, resting at none: with ``--context none`` a command stays
    judged at every reading); a warning names them; () when
    that would leave no channel judged at every reading: one channel's repeats set no
    threshold for another's. Why 0.8: a channel that updates in a share ``p`` of its
    readings errs ~``1/sqrt(p)`` of its RMS error at an update (the repeats err ~0), and
    the difference rule's clipped spread of its changes (3 spreads) shrinks to its floor
    once ``p`` < 1/9: at ``p`` = 0.2 the first is ~2.2x, the second has not begun."""
    still = still_shares(series, len(features))
    most, rest = states(series, len(features))
    many = (most > MAX_LEVELS) & (rest < REST_SHARE)  # not a command, a mode or a burst
    held = tuple(
        int(i)
        for i in np.flatnonzero((still >= share) & (still < 1.0) & many)
        if int(i) not in set(context)
    )
    if not held or len(held) + len(context) >= len(features):
        return ()
    log.warning(
        "%d channel(s) repeat their last value most of the time (%s of their changes are 0) "
        "but take many values, like sensors polled faster than they update: a repeat is "
        "read by the model and judged by no rule but the flatline rule; a new value is "
        "judged as usual",
        len(held),
        ", ".join(f"{features[i]} {100 * still[i]:.1f} %" for i in held),
    )
    return held


def judged_only(
    series: Sequence[StreamSeries], context: Sequence[int], held: Sequence[int] = ()
) -> list[StreamSeries]:
    """``series`` with the context channels, and the held channels' repeats
    (:func:`detector.core.held.repeats`), missing (nan): what the rules see live."""
    if not context and not held:
        return list(series)
    out = []
    for s in series:
        v = s.values.copy()
        v[repeats(s.values, held)] = np.nan
        v[:, list(context)] = np.nan
        out.append(StreamSeries(s.stream_id, s.ts_ms, v))
    return out


def shift_view(series: Sequence[StreamSeries], scoring: ScoringConfig) -> list[StreamSeries]:
    """``series`` as the shift rule reads them: context and held channels missing."""
    return judged_only(series, tuple(sorted(scoring.context + scoring.held)))
