"""History for the trainer: readings grouped into per-stream, time-ordered series.

Every source ends in the same value, :class:`StreamSeries` — one stream's timestamps and
values, ``nan`` where a feature is missing — built by :func:`group_readings` from decoded
:class:`detector.core.schema.Reading` s. Files are decoded by the same code as the live path
(``detector.replay.read_readings`` for CSV/JSONL, ``detector.core.schema.decode_message`` for
Kafka messages), so training sees exactly what a detector would see; bad readings are
skipped and counted, never fatal.

Sources: CSV, Parquet, JSON Lines (data-contract messages), a Kafka topic over a time
range (optionally without the readings that were alerted; read by
:mod:`detector.kafka.reader`, connected as the worker connects), and the synthetic fleet.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from detector.core.schema import Reading
from detector.sandbox.simulation import Fleet, FleetSpec

__all__ = [
    "META",
    "StreamSeries",
    "data_range",
    "every_stream",
    "folds",
    "from_simulation",
    "group_readings",
    "holdout",
    "scaled_padded",
    "spread_sample",
    "stream_key",
    "value_keys",
]

log = logging.getLogger("anomalyd.training")
META = ("ts", "timestamp", "stream_id")  # columns that are no feature
_F32_MAX = float(np.finfo(np.float32).max)  # beyond it, a value is refused as infinite
Admit = Callable[[str], bool]  # whether a stream's readings are kept (training.sample)


def every_stream(stream_id: str) -> bool:
    """The :data:`Admit` that keeps every stream (no sample)."""
    return True


@dataclass(frozen=True, eq=False)
class StreamSeries:
    """One stream's history: ``ts_ms`` (T,) int64 ascending, ``values`` (T, F) float32.

    ``nan`` in ``values`` is a missing feature.
    """

    stream_id: str
    ts_ms: npt.NDArray[np.int64]
    values: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        if self.ts_ms.ndim != 1 or self.values.ndim != 2 or len(self.ts_ms) != len(self.values):
            raise ValueError(
                f"{self.stream_id}: ts_ms must be (T,) and values (T, F), got "
                f"{self.ts_ms.shape} and {self.values.shape}"
            )

    def __len__(self) -> int:
        return len(self.ts_ms)


def group_readings(readings: Iterable[Reading], n_features: int) -> list[StreamSeries]:
    """Group readings by stream (streams in first-seen order), each sorted by ts (stable).

    A reading repeated exactly (its stream, time and values again: two exports that
    overlap, a file given twice, a producer's retry) is kept once: kept twice, every
    other step of the history is no change, and the model and its thresholds learn that
    (a file given twice loosened the error threshold 5.2 -> 7.7 and missed a stuck sensor).
    """
    ts: dict[str, list[int]] = defaultdict(list)
    vals: dict[str, list[tuple[float, ...]]] = defaultdict(list)
    for r in readings:
        ts[r.stream_id].append(r.ts_ms)
        vals[r.stream_id].append(r.values)
    out = []
    repeated = clashing = 0
    for sid, t in ts.items():
        t_arr = np.asarray(t, dtype=np.int64)
        v_arr = np.asarray(vals[sid], dtype=np.float32).reshape(len(t), n_features)
        order = np.argsort(t_arr, kind="stable")  # stable: equal ts keep arrival order
        t_arr, v_arr = t_arr[order], v_arr[order]
        repeat = np.zeros(len(t_arr), dtype=bool)
        tied = np.flatnonzero(np.diff(t_arr) == 0)
        for start in tied[np.r_[True, np.diff(tied) > 1]] if len(tied) else ():  # each tie
            end = start + 1
            while end < len(t_arr) and t_arr[end] == t_arr[start]:
                end += 1
            seen: set[tuple[float | None, ...]] = set()
            for k in range(start, end):  # nan-aware: a missing cell equals a missing cell
                key = tuple(None if math.isnan(x) else x for x in v_arr[k].tolist())
                repeat[k] = key in seen
                seen.add(key)
            clashing += len(seen) - 1
        repeated += int(repeat.sum())
        out.append(StreamSeries(sid, t_arr[~repeat], v_arr[~repeat]))
    if repeated:
        log.warning(
            "%d readings repeat another of their stream exactly (time and values): each is "
            "kept once (inputs that overlap, or a file given twice?)",
            repeated,
        )
    if clashing:
        log.warning(
            "%d readings share their stream's time with another of other values: both are "
            "kept, in input order",
            clashing,
        )
    return out


def data_range(series: Sequence[StreamSeries]) -> dict[str, Any]:
    """The manifest's ``data_range``: first/last reading (ISO and ms), streams, readings."""
    nonempty = [s for s in series if len(s)]
    if not nonempty:
        return {"streams": 0, "readings": 0}
    lo = min(int(s.ts_ms[0]) for s in nonempty)
    hi = max(int(s.ts_ms[-1]) for s in nonempty)
    iso = [np.datetime_as_string(np.datetime64(v, "ms"), unit="ms") + "Z" for v in (lo, hi)]
    return {
        "start": iso[0],
        "end": iso[1],
        "start_ms": lo,
        "end_ms": hi,
        "streams": len(nonempty),
        "readings": sum(len(s) for s in nonempty),
    }


def value_keys(raw: bytes) -> list[str]:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    out: list[str] = []
    for o in obj if isinstance(obj, list) else [obj]:
        if isinstance(o, dict) and isinstance(o.get("values"), dict):
            out += [str(k) for k in o["values"]]
    return out


def from_simulation(spec: FleetSpec, ticks: int, start_tick: int = 0) -> list[StreamSeries]:
    """``ticks`` ticks of the synthetic fleet from ``start_tick``, one series per stream."""
    block = Fleet(spec, start_tick=start_tick).step(ticks)
    return [
        StreamSeries(
            sid,
            np.ascontiguousarray(block.ts_ms[:, s]),
            np.ascontiguousarray(block.values[:, s].astype(np.float32)),
        )
        for s, sid in enumerate(block.stream_ids)
    ]


#: Held-out streams are replayed from a cold state, and the rules judge little of a stream's
#: first few hundred readings (the shift rule nothing before its warm-up and slow span, 210).
#: A shorter stream trains every model and is held out of none while at least
#: ``min_streams`` others can be: a first fold of two new streams (40 readings each) among
#: eight of 2,000 had left the shipped model without its shift and difference rules, each
#: "off: only N readings to calibrate on".
MIN_HELD_READINGS = 300


def folds(series: Sequence[StreamSeries], fraction: float, min_streams: int = 8) -> list[list[int]]:
    """The streams split into ``round(1 / fraction)`` calibration folds of about ``fraction``
    each, by a hash of their ids (the choice does not depend on their order); none when
    there are fewer than ``min_streams`` streams. Streams under :data:`MIN_HELD_READINGS`
    readings are in no fold while ``min_streams`` others, and one per fold, are long enough.

    >>> few = [StreamSeries(f"s{i}", np.zeros(1, np.int64), np.zeros((1, 1))) for i in range(8)]
    >>> folds(few, 0.25)
    [[5, 6], [1, 7], [0, 2], [3, 4]]
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"the calibration hold-out must be a fraction in [0, 1), got {fraction}")
    k = round(1 / fraction) if fraction > 0 else 0
    long = [i for i, s in enumerate(series) if len(s) >= MIN_HELD_READINGS]
    pool = long if len(long) >= max(min_streams, k) else list(range(len(series)))
    n = len(pool)
    if n < min_streams or k < 2 or n // k < 1:
        return []
    order = [pool[i] for i in _hash_order([series[i] for i in pool])]
    return [sorted(order[j * n // k : (j + 1) * n // k]) for j in range(k)]


def spread_sample(series: Sequence[StreamSeries], most: int) -> list[int]:
    """Indices of at most ``most`` streams, evenly spaced in the hash order :func:`folds`
    cuts (so every fold lends its share, and the choice does not depend on the streams'
    order); every stream when there are no more.

    >>> few = [StreamSeries(f"s{i}", np.zeros(1, np.int64), np.zeros((1, 1))) for i in range(8)]
    >>> spread_sample(few, 4), spread_sample(few, 8)
    ([2, 4, 6, 7], [0, 1, 2, 3, 4, 5, 6, 7])
    """
    n = len(series)
    if n <= most:
        return list(range(n))
    order = _hash_order(series)
    return sorted(order[j * n // most] for j in range(most))


def stream_key(stream_id: str) -> bytes:
    """The hash streams are ordered by for folds and samples (stable across runs)."""
    return hashlib.blake2b(stream_id.encode(), digest_size=8).digest()


def _hash_order(series: Sequence[StreamSeries]) -> list[int]:
    key = [stream_key(s.stream_id) for s in series]
    return sorted(range(len(series)), key=key.__getitem__)


def holdout(series: Sequence[StreamSeries], fraction: float, min_streams: int = 8) -> list[int]:
    """Indices of the streams held out of the shipped model's fit for calibration: the first
    of :func:`folds`; none when there are fewer than ``min_streams`` streams (calibration
    then uses the fit's held-out tails).

    >>> few = [StreamSeries(f"s{i}", np.zeros(1, np.int64), np.zeros((1, 1))) for i in range(8)]
    >>> holdout(few, 0.25), holdout(few[:7], 0.25)
    ([5, 6], [])
    """
    split = folds(series, fraction, min_streams)
    return split[0] if split else []


def scaled_padded(
    series: Sequence[StreamSeries], mean: Sequence[float], std: Sequence[float]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """(S, T, F) float32 readings scaled as ``(v - mean) / std``, nan-padded past each
    series' end (T the longest), and the lengths (S,): every stream stepped side by side."""
    m, sd = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    lens = np.array([len(s) for s in series], np.int64)
    xs = np.full((len(series), int(lens.max(initial=0)), len(m)), np.nan, np.float32)
    for i, s in enumerate(series):
        xs[i, : len(s)] = (s.values - m) / sd
    return xs, lens
