"""What a calibration part runs on: the streams it measures, from where, and what sets its scale.

The thresholds are measured on streams the part's model never saw (held-out streams, whole,
from a cold state) or, with none held out, on the fit's held-out tails warmed up by the
readings before them. The error scale, the whitening and the no-model rules' priors apply to
every stream alike live, so they are measured on the fleet — on a spread sample of it for a
large fleet: an RMS, median or covariance over 1,000 streams is as good as over 100,000,
and the shift rule's walk holds its streams' readings in one array (100,000 streams of
5,000 readings and 6 channels would be 24 GB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from training.data import StreamSeries, spread_sample
from training.fit import FitResult

__all__ = [
    "CONTEXT",
    "SCALE_STREAMS",
    "SETTLE",
    "CalSet",
    "calibration_set",
    "cut",
    "settled",
    "short_history",
    "unheld",
]

SETTLE = 100  # readings of a cold stream left out of the error prior (the state settles)
# Readings before a fit's held-out tail that warm its calibration replays up: five times
# the statistics row's longest memory (1,000 readings), so the tail is scored warm. (The
# new-range rule, off by default, is then judged against these readings' range only.)
CONTEXT = 5000
# At most this many streams set the error scale, the whitening and the no-model priors.
SCALE_STREAMS = 1000


@dataclass(frozen=True)
class CalSet:
    """What calibration runs on: the series and, per series, the first reading it measures."""

    series: list[StreamSeries]
    collect_from: list[int]
    held_out_streams: bool
    # The flatline limits' source: every stream's whole history (a run of repeats needs no
    # model; on a quantised dev fleet the held-out streams' runs alone set limits that
    # clean readings of the other streams exceeded, docs/quality.md session 18).
    history: list[StreamSeries]
    # What the errors are equalised on and the no-model rules' priors measured on: the whole
    # fleet where streams were held out (the thresholds are then measured on streams that
    # did not set the scale or the prior, as live), else the calibration series themselves;
    # a spread sample of at most SCALE_STREAMS of them either way. A prior from a fold's
    # three streams differed 2-5x between folds, and live every stream is judged by the
    # shipped one (docs/quality.md, session 28).
    scale_series: list[StreamSeries]
    scale_from: list[int]


def calibration_set(
    series: Sequence[StreamSeries], held: list[int], res: FitResult, fit_idx: list[int]
) -> CalSet:
    """The streams ``held`` out of ``res``'s fit, or with none the tails ``res`` held out of
    the streams ``fit_idx``."""
    if held:
        cal = [series[i] for i in held]
        # Each stream's last CONTEXT readings: a long history is not replayed whole.
        every = [
            s if len(s) <= CONTEXT else cut(s, len(s) - CONTEXT, len(s))
            for s in (series[i] for i in spread_sample(series, SCALE_STREAMS))
        ]
        return CalSet(cal, settled(cal), True, list(series), every, settled(every))
    # A fit's own streams lend their held-out tails, each warmed up by the CONTEXT readings
    # before it: a long history (one stream of 100,000 readings) is not replayed whole each
    # time the calibration measures its tail.
    starts = [max(0, k - CONTEXT) for k in res.split]
    tails = [cut(series[i], a, len(series[i])) for i, a in zip(fit_idx, starts, strict=True)]
    start = [k - a for k, a in zip(res.split, starts, strict=True)]
    return unheld(tails, start, series)


def unheld(tails: list[StreamSeries], start: list[int], series: Sequence[StreamSeries]) -> CalSet:
    """With no stream held out: the thresholds measured on ``tails`` from ``start``, the
    scale on a spread sample of them."""
    pick = spread_sample(tails, SCALE_STREAMS)
    scale, scale_from = [tails[i] for i in pick], [start[i] for i in pick]
    return CalSet(tails, start, False, list(series), scale, scale_from)


def settled(series: Sequence[StreamSeries]) -> list[int]:
    """Per series, the first reading measured once a cold state has settled."""
    return [min(SETTLE, len(s) // 4) for s in series]


def cut(s: StreamSeries, a: int, b: int) -> StreamSeries:
    """Readings ``a`` to ``b`` of ``s``."""
    return StreamSeries(s.stream_id, s.ts_ms[a:b], s.values[a:b])


def short_history(series: Sequence[StreamSeries]) -> str:
    """What to give a calibration that found too few readings, in readings per stream."""
    n = [len(s) for s in series] or [0]
    # ~100 readings in all from each stream's last fifth, after its warm-up of 10
    want = (100 // len(n) + 10) * 5
    return (
        f"the history has {len(n)} streams of {min(n)} to {max(n)} readings, and calibration "
        f"reads the last fifth of each: give each stream about {want:,} readings or more"
    )
