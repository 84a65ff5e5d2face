"""A row-wise gateway batch decoded in one pass over its columns, when nothing in it is odd.

A gateway's batch (a JSON array of readings) is decoded reading by reading by
:mod:`detector.core.schema`, which explains every refused reading. Most batches hold
nothing to refuse: every reading an object with a string ``stream_id`` (or none, the key
standing in), an epoch-ms ``ts`` and a ``values`` object naming each of the model's
features once. :func:`fast_rows` checks exactly that over whole columns — type sets and
numpy range checks, C loops instead of per-reading Python — and returns the batch as
columns; for anything else it returns ``None`` and the reading-by-reading path decides
(and refuses with the same reasons as ever). The result is the slow path's, value for
value: ``tests/unit/core/test_rowbatch.py`` compares the two on valid and broken batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from operator import itemgetter, methodcaller
from typing import Any

import numpy as np

from detector.core.readings import FeatureSpec, Reading
from detector.core.timefmt import TS_MAX_MS, TS_MIN_MS

__all__ = ["RowBatch", "fast_rows"]

_F32_MAX = 3.4028234663852886e38
_MAX_STREAM_ID = 256
_NUMBERS = {float, int, type(None)}  # bool is its own type: never a number here
_GET_SID = "stream_id"


@dataclass(frozen=True, slots=True)
class RowBatch:
    """The readings of one row-wise batch message as columns, in message order."""

    stream_ids: list[str]
    ts: np.ndarray  # (N,) int64 epoch ms
    values: np.ndarray  # (N, F) float64, nan where missing

    def __len__(self) -> int:
        return len(self.ts)

    def readings(self) -> list[Reading]:
        """The same readings one by one."""
        return [
            Reading(s, t, tuple(v))
            for s, t, v in zip(self.stream_ids, self.ts.tolist(), self.values.tolist(), strict=True)
        ]


def fast_rows(items: list[Any], key: str | None, spec: FeatureSpec) -> RowBatch | None:
    """``items`` (a decoded JSON array) as a :class:`RowBatch`, or None to decode one by one."""
    if set(map(type, items)) != {dict}:
        return None
    sids = list(map(methodcaller("get", _GET_SID, key), items))
    if set(map(type, sids)) != {str}:
        return None
    lens = list(map(len, sids))
    if min(lens) < 1 or max(lens) > _MAX_STREAM_ID:
        return None
    ts_in = list(map(methodcaller("get", "ts"), items))
    if set(map(type, ts_in)) != {int}:
        return None  # ISO-8601 text, a float, a missing ts: the slow path parses or refuses
    try:
        ts = np.array(ts_in, dtype=np.int64)
    except OverflowError:
        return None
    if int(ts.min()) < TS_MIN_MS or int(ts.max()) > TS_MAX_MS:
        return None
    vals = list(map(methodcaller("get", "values"), items))
    if set(map(type, vals)) != {dict}:
        return None  # values as arrays, or missing: one by one
    f = len(spec.names)
    if set(map(len, vals)) != {f}:
        return None  # a feature missing (nan) or an unknown one: one by one
    try:
        rows = list(map(itemgetter(*spec.names), vals))
    except KeyError:
        return None
    cells = rows if f == 1 else chain.from_iterable(rows)
    if not set(map(type, cells)) <= _NUMBERS:
        return None
    try:
        values = np.array(rows, dtype=np.float64).reshape(len(rows), f)
    except OverflowError:
        return None
    if np.abs(values[~np.isnan(values)]).max(initial=0.0) > _F32_MAX:
        return None
    return RowBatch(sids, ts, values)
