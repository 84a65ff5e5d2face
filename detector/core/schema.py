"""Readings in, per the data contract (v1): decode Kafka message bytes without ever raising.

A message value is one reading or a JSON array of readings (a gateway's batch)::

    {"stream_id": "pump-17", "ts": "2026-11-21T10:00:00.123Z",
     "values": {"temp": 71.2, "vibration": 0.03}}

``stream_id`` may be omitted when the message key is set; ``ts`` is ISO-8601 or epoch
milliseconds; ``values`` is an object keyed by feature name or an array in the model's
feature order; a missing or null feature is a missing value (``nan``), not an error.
Anything else becomes a :class:`BadReading` with a stable ``reason`` code
(:data:`REASONS`), so that the worker can dead-letter it and carry on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

from detector.core.timefmt import TS_MAX_MS, TS_MIN_MS, parse_ts

__all__ = [
    "REASONS",
    "BadReading",
    "FeatureSpec",
    "Reading",
    "decode_message",
    "parse_ts",
]

#: Every reason a reading can be refused for. Stable: they are metric labels and DLQ headers.
REASONS: tuple[str, ...] = (
    "oversized",
    "not_json",
    "not_object",
    "empty_batch",
    "batch_too_large",
    "missing_stream_id",
    "bad_stream_id",
    "missing_ts",
    "bad_ts",
    "missing_values",
    "bad_values",
    "unknown_feature",
    "wrong_feature_count",
    "non_numeric_value",
    "non_finite_value",
)

_F32_MAX = 3.4028234663852886e38
_MAX_STREAM_ID = 256
_NAN = float("nan")


class Reading(NamedTuple):
    """One sensor reading. A NamedTuple, not a dataclass: it is built per reading in the hot path.

    ``values`` are in the model's feature order, ``nan`` where missing.
    """

    stream_id: str
    ts_ms: int
    values: tuple[float, ...]


class BadReading(NamedTuple):
    """A refused reading: ``reason`` is one of :data:`REASONS`, ``detail`` says what to fix.

    ``raw`` is the offending JSON (the whole message, or the batch element number ``item``).
    """

    reason: str
    detail: str
    raw: bytes
    item: int | None = None


class FeatureSpec:
    """The feature names a model expects, in order, with limits on what a message may carry.

    Examples
    --------
    >>> spec = FeatureSpec(("temp", "vibration"))
    >>> decode_message(b'{"ts": 0, "values": {"temp": 1.5}}', b"pump-1", spec)
    [Reading(stream_id='pump-1', ts_ms=0, values=(1.5, nan))]
    """

    __slots__ = ("index", "max_batch", "max_bytes", "names")

    def __init__(
        self, names: Sequence[str], max_bytes: int = 1_000_000, max_batch: int = 10_000
    ) -> None:
        if not names:
            raise ValueError("a model needs at least one feature name")
        if len(set(names)) != len(names):
            raise ValueError(f"feature names must be unique, got {list(names)}")
        self.names: tuple[str, ...] = tuple(names)
        self.index: dict[str, int] = {n: i for i, n in enumerate(self.names)}
        self.max_bytes = max_bytes
        self.max_batch = max_batch


def _bad(reason: str, detail: str, raw: bytes, index: int | None) -> BadReading:
    return BadReading(reason, detail, raw, index)


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
    ts_in = obj.get("ts")
    if type(ts_in) is int and TS_MIN_MS <= ts_in <= TS_MAX_MS:  # epoch ms: the common case
        ts: int = ts_in
    else:
        if ts_in is None and "ts" not in obj:
            return _bad_obj(
                obj, raw, index, "missing_ts", "set 'ts' (ISO-8601 or epoch milliseconds)"
            )
        parsed = parse_ts(ts_in)
        if parsed is None:
            return _bad_obj(
                obj,
                raw,
                index,
                "bad_ts",
                f"'ts' {str(ts_in)[:64]!r} is not ISO-8601 or epoch milliseconds between "
                "1970 and 2100",
            )
        ts = parsed
    vals = obj.get("values")
    out: list[float]
    if type(vals) is dict:
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
    elif type(vals) is list:
        if len(vals) != len(spec.names):
            return _bad_obj(
                obj,
                raw,
                index,
                "wrong_feature_count",
                f"'values' has {len(vals)} "
                f"entries, the model expects {len(spec.names)}: {list(spec.names)}",
            )
        out = []
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
    elif vals is None:
        return _bad_obj(
            obj,
            raw,
            index,
            "missing_values",
            "set 'values' (an object by feature name or an array)",
        )
    else:
        return _bad_obj(
            obj, raw, index, "bad_values", "'values' must be an object by feature name or an array"
        )
    return Reading(sid, ts, tuple(out))


def _bad_obj(
    obj: Any, raw: bytes | None, index: int | None, reason: str, detail: str
) -> BadReading:
    return BadReading(reason, detail, raw if raw is not None else orjson.dumps(obj), index)


def decode_message(
    value: bytes | None, key: bytes | None, spec: FeatureSpec
) -> list[Reading | BadReading]:
    """Decode one Kafka message into readings and bad readings, in message order. Never raises."""
    raw = value if value is not None else b""
    if len(raw) > spec.max_bytes:
        return [
            _bad(
                "oversized",
                f"message is {len(raw)} bytes, the limit is {spec.max_bytes}",
                raw[:1024],
                None,
            )
        ]
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return [_bad("not_json", f"not valid UTF-8 JSON: {exc}"[:200], raw, None)]
    try:
        skey = key.decode("utf-8") if key else None
    except UnicodeDecodeError:
        skey = None
    if isinstance(obj, list):
        if not obj:
            return [_bad("empty_batch", "a batch array must hold at least one reading", raw, None)]
        if len(obj) > spec.max_batch:
            return [
                _bad(
                    "batch_too_large",
                    f"a batch holds {len(obj)} readings, the limit is {spec.max_batch}",
                    raw[:1024],
                    None,
                )
            ]
        return [_decode_one(o, skey, spec, None, i) for i, o in enumerate(obj)]
    return [_decode_one(obj, skey, spec, raw, None)]
