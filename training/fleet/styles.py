"""Simulated fleets in several *styles*, with labelled anomalies, for ``anomalyd evaluate fleet``.

This generator is independent of the product's own simulator
(:mod:`detector.sandbox.simulation`), so that a detector tuned on that simulator gains
nothing here by construction. A style fixes what matters to a detector: the cycle (daily
sinusoid, square duty cycle, none), the noise colour (white or AR(1)), how strongly the
channels follow a shared load (gains, first-order smoothing, integer lags), quantised
sensors, slowly wandering baselines, irregular cadence (jittered and dropped readings) and
missing cells. A channel is one kind of sensor across the fleet (levels and noise spanning
four decades from channel to channel, some tens of percent from stream to stream); gains,
lags and phases are drawn per stream.

Per channel ``c`` of a stream, on nominal tick ``t``::

    x_c(t) = base_c + sigma_c * (gain_c * smooth_c(load)(t - lag_c) + noise_c(t) + wander_c(t))
    load(t) = cycle_amp * cycle(t) + AR(1) fluctuation

then quantised (``round(x / q) * q``) where the style says so. Anomalies are injected into
the evaluation segment before quantisation; their sizes are in units ``u`` of the channel's
own clean *step scale*: ``u = 1.4826 * MAD(x(t) - x(t-1)) / sqrt(2)`` over the clean
history (the noise σ for white noise; what a channel moves in one reading otherwise). The
sizes are the constants :data:`SIZES` and :data:`DURATIONS`, fixed once and never tuned
to make a detector pass (see docs/quality.md).

Randomness comes from independent generators derived from ``(seed, style)``: stream
parameters, clean signal, missing readings and cells, anomalies. The clean evaluation
segment is therefore exactly the anomalous one outside its labelled windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from detector.core.schema import Reading
from training.data import StreamSeries
from training.fleet.signal import (
    Params,
    Style,
    clean_signal,
    make_params,
    make_rng,
    quantise,
    stationary_ar1,
    step_unit,
)

__all__ = [
    "DURATIONS",
    "KINDS",
    "SIZES",
    "STYLES",
    "FleetData",
    "Label",
    "Style",
    "generate",
    "to_readings",
]

F64 = npt.NDArray[np.float64]
#: Anomaly kinds, in the order they are dealt to streams.
KINDS: tuple[str, ...] = ("spike", "level_shift", "drift", "stuck", "noise_burst", "decoupling")
#: kind -> (min, max) duration in readings.
DURATIONS: dict[str, tuple[int, int]] = {
    "spike": (1, 1),
    "level_shift": (20, 60),
    "drift": (30, 120),
    "stuck": (30, 90),
    "noise_burst": (20, 60),
    "decoupling": (60, 180),
}
#: kind -> (min, max) size in units u of the channel's step scale, drawn uniformly:
#: spike: added to one reading (sign at random); level_shift: added for the whole window;
#: drift: a linear ramp from 0 reaching this at the window's end; noise_burst: std of
#: extra white noise. ``stuck`` repeats the onset value exactly; ``decoupling`` freezes
#: the channel's load term at its onset value plus an independent path of the load's own
#: fluctuation: sizes of those two follow from the signal (``Label.size_u`` records them).
SIZES: dict[str, tuple[float, float]] = {
    "spike": (6.0, 10.0),
    "level_shift": (4.0, 6.0),
    "drift": (6.0, 8.0),
    "noise_burst": (5.0, 8.0),
}
ANOMALIES_PER_STREAM = 3
QUIET_START = 200  # no anomaly starts in the evaluation segment's first readings
MIN_GAP = 30  # normal readings after each anomaly window
# The shortest evaluation segment with room for every stream's anomalies at their longest.
MIN_EVAL = QUIET_START + ANOMALIES_PER_STREAM * (
    max(d[1] for d in DURATIONS.values()) + MIN_GAP + 1
)
START_MS = 1_795_219_200_000  # 2026-11-21T00:00:00Z


STYLES: dict[str, Style] = {
    s.name: s
    for s in (
        Style("daily", 4),
        Style("duty", 5, cycle="square", cycle_readings=90, smooth=(0.3, 0.7), gain=(3, 10)),
        Style(
            "coloured",
            6,
            cycle="none",
            load_phi=0.995,
            load_std=1.0,
            lag=10,
            noise="ar1",
            gain=(1.0, 4.0),
        ),
        Style("quantised", 3, period_s=300, cycle_readings=288, quantised=1.0, wander=6.0),
        Style("irregular", 4, period_s=120, cycle_readings=720, jitter=0.4, drop=0.03, nan=0.02),
        Style(
            "mixed",
            6,
            cycle="square",
            cycle_readings=240,
            smooth=(0.5, 0.9),
            noise="ar1",
            quantised=0.5,
            quantum=0.5,
            wander=4.0,
            jitter=0.2,
            nan=0.01,
        ),
    )
}


@dataclass(frozen=True)
class Label:
    """One injected anomaly: readings of ``stream_id`` with ``start_ms <= ts <= end_ms``.

    ``size_u``: the largest change it made to the channel, in the channel's unit u
    (``noise_burst``: the extra noise's std).
    """

    stream_id: str
    kind: str
    start_ms: int
    end_ms: int
    channel: str
    size_u: float


@dataclass(frozen=True, eq=False)
class FleetData:
    """A generated fleet: clean history, the evaluation segment clean and with anomalies.

    ``unit`` (S, F) is each channel's step scale u, raw units.
    """

    style: Style
    seed: int
    features: tuple[str, ...]
    history: list[StreamSeries]
    clean: list[StreamSeries]
    anomalous: list[StreamSeries]
    labels: list[Label]
    unit: F64


@dataclass(frozen=True)
class _Window:
    stream: int
    kind: str
    start: int  # first tick of the evaluation segment
    end: int  # last tick, inclusive
    channel: int


def _windows(st: Style, p: Params, rng: np.random.Generator, n_eval: int) -> list[_Window]:
    """Anomaly windows: kinds dealt round-robin (shuffled), one per slot of the segment."""
    s = len(p.phase)
    kinds = [KINDS[i % len(KINDS)] for i in range(s * ANOMALIES_PER_STREAM)]
    order = rng.permutation(len(kinds))
    slot = (n_eval - QUIET_START) // ANOMALIES_PER_STREAM
    out = []
    for i, k in enumerate(order):
        stream, j = divmod(i, ANOMALIES_PER_STREAM)
        kind = kinds[k]
        lo, hi = DURATIONS[kind]
        dur = int(rng.integers(lo, hi + 1))
        room = slot - dur - MIN_GAP
        if room < 1:
            raise ValueError(f"an evaluation segment of {n_eval} readings is too short")
        start = QUIET_START + j * slot + int(rng.integers(0, room))
        if kind == "decoupling":  # the channel that follows the load most
            ch = int(np.argmax(np.abs(p.gain[stream])))
        else:
            ch = int(rng.integers(0, st.channels))
        out.append(_Window(stream, kind, start, start + dur - 1, ch))
    return out


def _inject(
    x: F64, w: _Window, term: F64, unit: F64, st: Style, p: Params, rng: np.random.Generator
) -> float:
    """Inject one anomaly into ``x`` (T, S, F) in place; returns its size in u."""
    rows, s, c = slice(w.start, w.end + 1), w.stream, w.channel
    n, u = w.end - w.start + 1, unit[s, c]
    before = x[rows, s, c].copy()
    if w.kind == "stuck":
        x[rows, s, c] = quantise(x[w.start, s, c], p.quantum[s, c])
    elif w.kind == "noise_burst":
        size = rng.uniform(*SIZES[w.kind])
        x[rows, s, c] += rng.standard_normal(n) * size * u
        return float(size)
    elif w.kind == "decoupling":
        fake = stationary_ar1(rng, (n, 1), st.load_phi)[:, 0] * st.load_std
        fake -= fake[0]
        frozen = term[w.start, s, c] + p.gain[s, c] * fake
        x[rows, s, c] += p.sigma[s, c] * (frozen - term[rows, s, c])
    else:
        size = rng.uniform(*SIZES[w.kind]) * rng.choice([-1.0, 1.0])
        ramp = np.arange(1, n + 1) / n if w.kind == "drift" else np.ones(n)
        x[rows, s, c] += ramp * size * u
    return float(np.max(np.abs(x[rows, s, c] - before)) / u)


def _series(
    ids: Sequence[str], ts: npt.NDArray[np.int64], x: F64, keep: npt.NDArray[np.bool_]
) -> list[StreamSeries]:
    """Per stream, the readings that arrived: ts (T, S), x (T, S, F), keep (T, S)."""
    return [
        StreamSeries(sid, ts[keep[:, i], i].copy(), x[keep[:, i], i].astype(np.float32))
        for i, sid in enumerate(ids)
    ]


def _arrivals(
    st: Style, rng: np.random.Generator, n: int, streams: int, channels: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Timestamps (T, S), staggered and jittered; arrived readings (T, S); NaN cells (T, S, F)."""
    period_ms = round(st.period_s * 1000)
    offset = np.arange(streams, dtype=np.int64) * period_ms // streams
    jitter = rng.uniform(-st.jitter, st.jitter, (n, streams)) * period_ms
    tick = np.arange(n, dtype=np.int64)[:, None] * period_ms
    ts = START_MS + tick + offset + jitter.astype(np.int64)
    keep = rng.random((n, streams)) >= st.drop
    missing = rng.random((n, streams, channels)) < st.nan
    return ts, keep, missing


def generate(
    style: Style | str,
    seed: int,
    streams: int = 24,
    history: int = 2000,
    evaluation: int = 1500,
) -> FleetData:
    """A fleet of ``streams`` streams: ``history`` clean readings, then ``evaluation`` more.

    Examples
    --------
    >>> fleet = generate("daily", seed=1, streams=2, history=300, evaluation=900)
    >>> len(fleet.history[0]), fleet.history[0].values.shape[1], len(fleet.labels)
    (300, 4, 6)
    """
    st = STYLES[style] if isinstance(style, str) else style
    if not 0 <= st.jitter < 0.5:
        raise ValueError(f"jitter must be in [0, 0.5), got {st.jitter}")
    p = make_params(st, make_rng(seed, st, 0), streams)
    n = history + evaluation
    x, term, _ = clean_signal(st, p, make_rng(seed, st, 1), n)
    unit = step_unit(x[:history])
    ts, keep, missing = _arrivals(st, make_rng(seed, st, 2), n, streams, x.shape[2])
    bad = x.copy()
    arng = make_rng(seed, st, 3)
    windows = _windows(st, p, arng, evaluation)
    ev = slice(history, n)
    sizes = [_inject(bad[ev], w, term[ev], unit, st, p, arng) for w in windows]
    for w in windows:  # an anomaly's first reading arrives, and stuck readings carry values
        keep[history + w.start, w.stream] = True
        last = w.end if w.kind == "stuck" else w.start
        missing[history + w.start : history + last + 1, w.stream, w.channel] = False
    ids = [f"{st.name}-{seed}-{i:04d}" for i in range(streams)]
    clean, bad = (np.where(missing, np.nan, quantise(v, p.quantum)) for v in (x, bad))
    features = tuple(f"ch{c}" for c in range(st.channels))
    labels = [
        Label(
            ids[w.stream],
            w.kind,
            int(ts[history + w.start, w.stream]),
            int(ts[history + w.end, w.stream]),
            features[w.channel],
            round(size, 3),
        )
        for w, size in zip(windows, sizes, strict=True)
    ]
    labels.sort(key=lambda a: (a.start_ms, a.stream_id))
    return FleetData(
        st,
        seed,
        features,
        _series(ids, ts[:history], clean[:history], keep[:history]),
        _series(ids, ts[ev], clean[ev], keep[ev]),
        _series(ids, ts[ev], bad[ev], keep[ev]),
        labels,
        unit,
    )


def to_readings(series: Sequence[StreamSeries]) -> list[Reading]:
    """All streams' readings merged in time order (ties: stream order), as live traffic."""
    rows = [
        (int(t), i, s.stream_id, tuple(v))
        for i, s in enumerate(series)
        for t, v in zip(s.ts_ms.tolist(), s.values.tolist(), strict=True)
    ]
    rows.sort(key=lambda r: (r[0], r[1]))
    return [Reading(sid, t, vals) for t, _, sid, vals in rows]
