"""Readings in, per the data contract (v1.1): decode Kafka message bytes without ever raising.

A message value is one reading or a JSON array of readings (a gateway's batch)::

    {"stream_id": "pump-17", "ts": "2026-11-21T10:00:00.123Z",
     "values": {"temp": 71.2, "vibration": 0.03}}

``stream_id`` may be omitted when the message key is set; ``ts`` is ISO-8601 or epoch
milliseconds; ``values`` is an object keyed by feature name or an array in the model's
feature order; a missing or null feature is a missing value (``nan``), not an error.
Anything else becomes a :class:`BadReading` with a stable ``reason`` code
(:data:`REASONS`), so that the worker can dead-letter it and carry on.

A message may also (v1.1) carry one stream's readings column-wise, an object whose ``ts``
is an array (:mod:`detector.core.columnar`): decoded over whole columns by numpy, and
accepted or refused as a whole.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from itertools import repeat
from typing import Any

import numpy as np
import orjson

from detector.core.alerts import Origin
from detector.core.columnar import decode_columns, is_columnar
from detector.core.readings import (
    REASONS,
    BadReading,
    Columns,
    DecodedBatch,
    FeatureSpec,
    Reading,
    ReadingOrigins,
    Refused,
    SourceRecord,
)
from detector.core.rowbatch import RowBatch, fast_rows
from detector.core.timefmt import TS_MAX_MS, TS_MIN_MS, parse_ts

# The value types live in detector.core.readings; they are re-exported here because this
# is where every caller has always imported them from.
__all__ = [
    "REASONS",
    "BadReading",
    "Columns",
    "DecodedBatch",
    "FeatureSpec",
    "Reading",
    "ReadingOrigins",
    "Refused",
    "SourceRecord",
    "decode_batch",
    "decode_message",
    "parse_ts",
]

_F32_MAX = 3.4028234663852886e38
_MAX_STREAM_ID = 256
_NAN = float("nan")


def _bad(reason: str, detail: str, raw: bytes, index: int | None) -> BadReading:
    return BadReading(reason, detail, raw, index)


def _bad_obj(
    obj: Any, raw: bytes | None, index: int | None, reason: str, detail: str
) -> BadReading:
    return BadReading(reason, detail, raw if raw is not None else orjson.dumps(obj), index)


def _number(v: Any) -> float | str:
    """A finite float32-representable number, ``nan`` for missing, or a reason code."""
    if v is None:
        return _NAN
    if isinstance(v, bool) or not isinstance(v, int | float):
        return "non_numeric_value"
    f = float(v)
    if not math.isfinite(f) or abs(f) > _F32_MAX:
        return "non_finite_value"
    return f


def _decode_one(
    obj: Any, key: str | None, spec: FeatureSpec, raw: bytes | None, index: int | None
) -> Reading | BadReading:
    """One reading; the hot path, so no closures and the common cases first."""
    if type(obj) is not dict:
        return _bad_obj(
            obj,
            raw,
            index,
            "not_object",
            f"a reading must be a JSON object, got {type(obj).__name__}",
        )
    sid = obj.get("stream_id", key)
    if type(sid) is not str or not sid or len(sid) > _MAX_STREAM_ID:
        return _bad_stream_id(obj, sid, raw, index)
    ts_in = obj.get("ts")
    ts: int | BadReading
    if type(ts_in) is int and TS_MIN_MS <= ts_in <= TS_MAX_MS:  # epoch ms: the common case
        ts = ts_in
    else:
        ts = _ts_from_other(obj, ts_in, raw, index)
        if isinstance(ts, BadReading):
            return ts
    vals = obj.get("values")
    out: list[float] | BadReading
    if type(vals) is dict:
        out = _values_by_name(obj, vals, spec, raw, index)
    elif type(vals) is list:
        out = _values_in_order(obj, vals, spec, raw, index)
    else:
        return _bad_values(obj, vals, raw, index)
    if isinstance(out, BadReading):
        return out
    return Reading(sid, ts, tuple(out))


def _bad_stream_id(obj: Any, sid: Any, raw: bytes | None, index: int | None) -> BadReading:
    """Why ``sid`` (from the reading or the message key) is no stream id."""
    if sid is None:
        return _bad_obj(
            obj,
            raw,
            index,
            "missing_stream_id",
            "set 'stream_id' in the reading or the message key",
        )
    return _bad_obj(
        obj,
        raw,
        index,
        "bad_stream_id",
        f"'stream_id' must be a non-empty string of at most {_MAX_STREAM_ID} characters",
    )


def _ts_from_other(obj: Any, ts_in: Any, raw: bytes | None, index: int | None) -> int | BadReading:
    """Epoch ms from a ``ts`` that is not in-range epoch ms: ISO-8601, or why it is refused."""
    if ts_in is None and "ts" not in obj:
        return _bad_obj(obj, raw, index, "missing_ts", "set 'ts' (ISO-8601 or epoch milliseconds)")
    parsed = parse_ts(ts_in)
    if parsed is None:
        return _bad_obj(
            obj,
            raw,
            index,
            "bad_ts",
            f"'ts' {str(ts_in)[:64]!r} is not ISO-8601 or epoch milliseconds between 1970 and 2100",
        )
    return parsed


def _values_by_name(
    obj: Any, vals: dict[str, Any], spec: FeatureSpec, raw: bytes | None, index: int | None
) -> list[float] | BadReading:
    """The feature values of a ``values`` object, in the model's order, ``nan`` where absent."""
    out = [_NAN] * len(spec.names)
    idx = spec.index
    for name, v in vals.items():
        i = idx.get(name)
        if i is None:
            return _bad_obj(
                obj,
                raw,
                index,
                "unknown_feature",
                f"feature {name[:64]!r} is not one of the model's features {list(spec.names)}",
            )
        if type(v) is float and -_F32_MAX <= v <= _F32_MAX:
            out[i] = v
            continue
        f = _number(v)
        if type(f) is str:
            return _bad_obj(
                obj,
                raw,
                index,
                f,
                f"feature {name!r} has value {str(v)[:32]!r}; send a finite number or null",
            )
        out[i] = f  # type: ignore[assignment]
    return out


def _values_in_order(
    obj: Any, vals: list[Any], spec: FeatureSpec, raw: bytes | None, index: int | None
) -> list[float] | BadReading:
    """The feature values of a ``values`` array, which must hold one entry per feature."""
    if len(vals) != len(spec.names):
        return _bad_obj(
            obj,
            raw,
            index,
            "wrong_feature_count",
            f"'values' has {len(vals)} "
            f"entries, the model expects {len(spec.names)}: {list(spec.names)}",
        )
    out: list[float] = []
    for pos, v in enumerate(vals):
        if type(v) is float and -_F32_MAX <= v <= _F32_MAX:
            out.append(v)
            continue
        f = _number(v)
        if type(f) is str:
            return _bad_obj(
                obj,
                raw,
                index,
                f,
                f"value {pos} ({spec.names[pos]!r}) is "
                f"{str(v)[:32]!r}; send a finite number or null",
            )
        out.append(f)  # type: ignore[arg-type]
    return out


def _bad_values(obj: Any, vals: Any, raw: bytes | None, index: int | None) -> BadReading:
    """Why ``values``, neither an object nor an array, is refused."""
    if vals is None:
        return _bad_obj(
            obj,
            raw,
            index,
            "missing_values",
            "set 'values' (an object by feature name or an array)",
        )
    return _bad_obj(
        obj, raw, index, "bad_values", "'values' must be an object by feature name or an array"
    )


def decode_message(
    value: bytes | None, key: bytes | None, spec: FeatureSpec
) -> list[Reading | BadReading]:
    """Decode one Kafka message into readings and bad readings, in message order. Never raises.

    Examples
    --------
    >>> spec = FeatureSpec(("temp", "vibration"))
    >>> decode_message(b'{"ts": 0, "values": {"temp": 1.5}}', b"pump-1", spec)
    [Reading(stream_id='pump-1', ts_ms=0, values=(1.5, nan))]
    >>> decode_message(b'{"ts": [0, 1], "values": {"temp": [1.5, null]}}', b"pump-1", spec)[1]
    Reading(stream_id='pump-1', ts_ms=1, values=(nan, nan))
    """
    got = _decode_framed(value, key, spec)
    if isinstance(got, Columns | RowBatch):
        readings: list[Reading | BadReading] = [*got.readings()]
        return readings
    return got[1]


def decode_batch(records: Iterable[SourceRecord], spec: FeatureSpec) -> DecodedBatch:
    """Decode polled records into reading columns and refused readings. Never raises.

    Examples
    --------
    >>> from types import SimpleNamespace as R
    >>> recs = [R(topic="t", partition=0, offset=7, key=b"a", value=b'[{"ts": 1, "values": [2]}]'),
    ...         R(topic="t", partition=0, offset=8, key=None, value=b"nope")]
    >>> b = decode_batch(recs, FeatureSpec(("x",)))
    >>> b.stream_ids, b.ts.tolist(), b.values.tolist(), b.origins[0].index
    (['a'], [1], [[2.0]], 0)
    >>> [(r.bad.reason, r.origin.offset, r.origin.index) for r in b.refused]
    [('not_json', 8, -1)]
    """
    sids: list[str] = []
    ts: list[int] = []  # row-wise readings since the last columnar message
    vals: list[tuple[float, ...]] = []
    parts: list[tuple[np.ndarray, np.ndarray]] = []  # (n,) ts and (n, F) values, in order
    messages: list[tuple[str, int, int]] = []  # every record's position, once
    message: list[int] = []  # per reading: its record in ``messages``
    index: list[int] = []  # per reading: its position in the record (-1: a single reading)
    refused: list[Refused] = []
    for rec in records:
        got = _decode_framed(rec.value, rec.key, spec)
        k = len(messages)
        messages.append((rec.topic, rec.partition, rec.offset))
        if isinstance(got, Columns | RowBatch):  # columnar, or a row batch with nothing odd
            if ts:
                parts.append(_row_part(ts, vals, spec))
                ts, vals = [], []
            n = len(got)
            sids += got.stream_ids if isinstance(got, RowBatch) else [got.stream_id] * n
            message += repeat(k, n)
            index += range(n)
            parts.append((got.ts, got.values))
            continue
        is_batch, items = got
        for j, r in enumerate(items):
            if isinstance(r, Reading):
                sids.append(r.stream_id)
                ts.append(r.ts_ms)
                vals.append(r.values)
                message.append(k)
                index.append(j if is_batch else -1)
            else:
                origin = Origin(rec.topic, rec.partition, rec.offset, j if is_batch else -1)
                refused.append(Refused(r, origin, rec.key))
    if ts or not parts:
        parts.append(_row_part(ts, vals, spec))
    origins = ReadingOrigins(messages, np.array(message, np.int64), np.array(index, np.int64))
    if len(parts) == 1:
        return DecodedBatch(sids, parts[0][0], parts[0][1], origins, refused)
    ts_all = np.concatenate([pt[0] for pt in parts])
    return DecodedBatch(sids, ts_all, np.concatenate([pt[1] for pt in parts]), origins, refused)


def _row_part(
    ts: list[int], vals: list[tuple[float, ...]], spec: FeatureSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise readings as columns: (n,) int64 ts and (n, F) float64 values."""
    values = np.asarray(vals, dtype=np.float64).reshape(len(vals), len(spec.names))
    return np.asarray(ts, dtype=np.int64), values


def _decode_framed(
    value: bytes | None, key: bytes | None, spec: FeatureSpec
) -> tuple[bool, list[Reading | BadReading]] | Columns | RowBatch:
    """:func:`decode_message`, saying also whether the message was a batch array.

    An accepted columnar message comes back as its :class:`Columns`, a batch array with
    nothing to refuse as a :class:`RowBatch`; a refused columnar message, like a refused
    batch (empty or too large), as no batch: it holds no reading.
    """
    raw = value if value is not None else b""
    if len(raw) > spec.max_bytes:
        detail = f"message is {len(raw)} bytes, the limit is {spec.max_bytes}"
        return False, [_bad("oversized", detail, raw[:1024], None)]
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return False, [_bad("not_json", f"not valid UTF-8 JSON: {exc}"[:200], raw, None)]
    try:
        skey = key.decode("utf-8") if key else None
    except UnicodeDecodeError:
        skey = None
    if isinstance(obj, list):
        if not obj:
            detail = "a batch array must hold at least one reading"
            return False, [_bad("empty_batch", detail, raw, None)]
        if len(obj) > spec.max_batch:
            detail = f"a batch holds {len(obj)} readings, the limit is {spec.max_batch}"
            return False, [_bad("batch_too_large", detail, raw[:1024], None)]
        fast = fast_rows(obj, skey, spec)
        if fast is not None:
            return fast
        return True, [_decode_one(o, skey, spec, None, i) for i, o in enumerate(obj)]
    if is_columnar(obj):
        return _decode_columnar(obj, skey, spec, raw)
    return False, [_decode_one(obj, skey, spec, raw, None)]


def _decode_columnar(
    obj: dict[str, Any], key: str | None, spec: FeatureSpec, raw: bytes
) -> tuple[bool, list[Reading | BadReading]] | Columns:
    """A columnar message's readings, or the one bad reading that refuses it whole."""
    sid = obj.get("stream_id", key)
    if type(sid) is not str or not sid or len(sid) > _MAX_STREAM_ID:
        return False, [_bad_stream_id(obj, sid, raw, None)]
    got = decode_columns(obj, sid, spec, raw)
    return got if isinstance(got, Columns) else (False, [got])
