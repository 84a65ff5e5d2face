"""Columnar messages (data contract v1.1): one stream's readings column-wise, decoded by numpy.

A gateway may send many readings of one stream as columns, the cheapest form to move and
to decode::

    {"stream_id": "pump-17", "ts": [1795255200000, 1795255201000],
     "values": {"temp": [71.2, 71.3], "vibration": [0.03, null]}}

``ts`` is an array of epoch milliseconds (numbers) or ISO-8601 strings; ``values`` is an
object of arrays keyed by feature name (an absent feature is missing throughout) or an
array of arrays in the model's feature order, one inner array per reading. Every array
has one entry per ``ts`` entry.

The whole message is one unit: a ``null`` cell is a missing value (``nan``), but any other
bad cell or column refuses the whole message with one :class:`BadReading` (``item`` is
``None``), by the v1 reasons:

- ``ts`` empty: ``empty_batch``; more entries than ``FeatureSpec.max_batch``:
  ``batch_too_large``; a ``ts`` cell unparseable or out of range (``null`` included): ``bad_ts``;
- ``values`` absent: ``missing_values``; neither an object nor an array, a column that is
  not an array, or an array whose length differs from ``ts``: ``bad_values``;
- a column named after no feature: ``unknown_feature``; an inner array (array-of-arrays
  form) with other than one entry per feature: ``wrong_feature_count``;
- a cell that is no number (text, true/false, an object): ``non_numeric_value``; a number
  beyond float32's range (JSON has no NaN or inf): ``non_finite_value``.

Numeric cells are checked and converted by numpy over whole columns; only ISO-8601 ``ts``
strings are parsed one by one. The message's stream id is checked by the caller
(:mod:`detector.core.schema`), as for a v1 reading.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np

from detector.core.readings import BadReading, Columns, FeatureSpec
from detector.core.timefmt import TS_MAX_MS, TS_MIN_MS, parse_ts

__all__ = ["decode_columns", "is_columnar"]

_F32_MAX = float(np.finfo(np.float32).max)
_NUMBER_CELLS = frozenset((int, float, type(None)))  # bool is refused: true is not 1.0
_INT_ONLY = frozenset((int,))
_NUMBERS = frozenset((int, float))


def is_columnar(obj: Any) -> bool:
    """Whether a decoded JSON document is a columnar message: an object whose ``ts`` is an array."""
    return type(obj) is dict and type(obj.get("ts")) is list


def decode_columns(
    obj: dict[str, Any], stream_id: str, spec: FeatureSpec, raw: bytes
) -> Columns | BadReading:
    """The readings of a columnar message ``obj`` (raw JSON ``raw``), or why it is refused.

    ``stream_id`` is the message's checked stream id. Never raises.

    Examples
    --------
    >>> spec = FeatureSpec(("temp", "vibration"))
    >>> doc = {"ts": [1000, "1970-01-01T00:00:02Z"], "values": {"temp": [1.5, None]}}
    >>> c = decode_columns(doc, "pump-1", spec, b"")
    >>> c.ts.tolist(), c.values.tolist()
    ([1000, 2000], [[1.5, nan], [nan, nan]])
    >>> decode_columns({"ts": [1], "values": {"temp": [1, 2]}}, "p", spec, b"").reason
    'bad_values'
    """
    ts_in: list[Any] = obj["ts"]
    n = len(ts_in)
    if n == 0:
        return BadReading("empty_batch", "'ts' must hold at least one reading's time", raw)
    if n > spec.max_batch:
        detail = f"a columnar message holds {n} readings, the limit is {spec.max_batch}"
        return BadReading("batch_too_large", detail, raw[:1024])
    ts = _ts_column(ts_in, raw)
    if isinstance(ts, BadReading):
        return ts
    vals = obj.get("values")
    values: np.ndarray | BadReading
    if type(vals) is dict:
        values = _columns_by_name(vals, n, spec, raw)
    elif type(vals) is list:
        values = _rows_in_order(vals, n, spec, raw)
    elif vals is None:
        detail = "set 'values' (an object of arrays by feature name, or an array of arrays)"
        return BadReading("missing_values", detail, raw)
    else:
        detail = "'values' must be an object of arrays by feature name or an array of arrays"
        return BadReading("bad_values", detail, raw)
    if isinstance(values, BadReading):
        return values
    return Columns(stream_id, ts, values)


def _ts_column(ts_in: list[Any], raw: bytes) -> np.ndarray | BadReading:
    """(n,) int64 epoch ms: numbers by numpy, anything else through ``parse_ts`` one by one."""
    kinds = set(map(type, ts_in))
    ms: np.ndarray | None = None
    if kinds <= _INT_ONLY:
        try:
            ms = np.array(ts_in, dtype=np.int64)
        except OverflowError:  # beyond int64: out of range either way
            ms = None
    elif kinds <= _NUMBERS:  # floats are truncated toward zero, as parse_ts does
        f = np.array(ts_in, dtype=np.float64)
        if np.isfinite(f).all():
            ms = np.trunc(f).clip(TS_MIN_MS - 1, TS_MAX_MS + 1).astype(np.int64)
    else:
        parsed = [parse_ts(t) for t in ts_in]
        if None not in parsed:
            return np.array(parsed, dtype=np.int64)
    if ms is not None:
        bad = (ms < TS_MIN_MS) | (ms > TS_MAX_MS)
        if not bad.any():
            return ms
    pos = next((i for i, t in enumerate(ts_in) if parse_ts(t) is None), 0)
    detail = (
        f"'ts' entry {pos} ({str(ts_in[pos])[:64]!r}) is not ISO-8601 or "
        "epoch milliseconds between 1970 and 2100"
    )
    return BadReading("bad_ts", detail, raw)


def _columns_by_name(
    vals: dict[str, Any], n: int, spec: FeatureSpec, raw: bytes
) -> np.ndarray | BadReading:
    """(n, F) float64 from an object of columns, ``nan`` for null cells and absent features."""
    out = np.full((n, len(spec.names)), np.nan)
    for name, col in vals.items():
        i = spec.index.get(name)
        if i is None:
            detail = f"column {name[:64]!r} is not one of the model's features {list(spec.names)}"
            return BadReading("unknown_feature", detail, raw)
        if type(col) is not list or len(col) != n:
            got = f"{len(col)} entries" if type(col) is list else type(col).__name__
            detail = f"column {name!r} must be an array of {n} entries (one per 'ts'), got {got}"
            return BadReading("bad_values", detail, raw)
        column = _numeric(col)
        if isinstance(column, tuple):
            reason, pos = column
            return BadReading(reason, f"column {name!r} entry {pos} {_why(col[pos])}", raw)
        out[:, i] = column
    return out


def _rows_in_order(
    vals: list[Any], n: int, spec: FeatureSpec, raw: bytes
) -> np.ndarray | BadReading:
    """(n, F) float64 from an array of per-reading arrays in the model's feature order."""
    f = len(spec.names)
    if len(vals) != n or set(map(type, vals)) != {list}:
        detail = f"'values' must be an array of {n} arrays (one per 'ts'), one entry per feature"
        return BadReading("bad_values", detail, raw)
    if set(map(len, vals)) != {f}:
        pos = next(i for i, row in enumerate(vals) if len(row) != f)
        detail = (
            f"'values' entry {pos} has {len(vals[pos])} entries, "
            f"the model expects {f}: {list(spec.names)}"
        )
        return BadReading("wrong_feature_count", detail, raw)
    cells = list(chain.from_iterable(vals))  # row-major: (n * F,)
    flat = _numeric(cells)
    if isinstance(flat, tuple):
        reason, pos = flat
        detail = f"'values' entry {pos // f} ({spec.names[pos % f]!r}) {_why(cells[pos])}"
        return BadReading(reason, detail, raw)
    return flat.reshape(n, f)


def _numeric(cells: list[Any]) -> np.ndarray | tuple[str, int]:
    """float64 cells, ``nan`` for null; else the reason and position of the first bad cell."""
    if set(map(type, cells)) <= _NUMBER_CELLS:
        a = np.array(cells, dtype=np.float64)  # None -> nan
        too_big = np.abs(a) > _F32_MAX  # nan compares false: a null is no error
        if not too_big.any():
            return a
        return "non_finite_value", int(np.argmax(too_big))
    pos = next(i for i, c in enumerate(cells) if type(c) not in _NUMBER_CELLS)
    return "non_numeric_value", pos


def _why(cell: Any) -> str:
    return f"is {str(cell)[:32]!r}; send a finite number or null"
