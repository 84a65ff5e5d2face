"""The reading decoder: every contract form accepted, every malformed input refused by reason."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.core.schema import REASONS, BadReading, FeatureSpec, Reading, decode_message, parse_ts

SPEC = FeatureSpec(("temp", "vibration"), max_bytes=2000, max_batch=5)


def _one(value: object, key: bytes | None = b"pump-1") -> Reading | BadReading:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    out = decode_message(raw, key, SPEC)
    assert len(out) == 1
    return out[0]


def test_object_values_iso_ts_and_missing_feature() -> None:
    r = _one({"stream_id": "p", "ts": "2026-11-21T10:00:00.123Z", "values": {"temp": 71.2}})
    assert isinstance(r, Reading)
    assert r.stream_id == "p" and r.ts_ms == parse_ts("2026-11-21T10:00:00.123Z")
    assert r.values[0] == 71.2 and math.isnan(r.values[1])


def test_array_values_epoch_ms_null_and_key_as_stream_id() -> None:
    r = _one({"ts": 1_795_255_200_123, "values": [1, None]})
    assert r == Reading("pump-1", 1_795_255_200_123, (1.0, r.values[1]))
    assert math.isnan(r.values[1])


def test_iso_forms() -> None:
    assert parse_ts("2026-11-21T10:00:00Z") == parse_ts("2026-11-21T11:00:00+01:00")
    assert parse_ts("2026-11-21 10:00:00") == parse_ts("2026-11-21T10:00:00Z")  # naive = UTC
    assert parse_ts("2026-11-21T10:00:00.123456Z") == 1_795_255_200_123
    assert parse_ts("1795255200123") == 1_795_255_200_123
    assert parse_ts("0001795255200123") == 1_795_255_200_123
    assert parse_ts("1" * 5000) is None  # past Python's digit limit for int(): refused, not raised


def test_batch_array_keeps_order_and_isolates_bad_elements() -> None:
    out = decode_message(
        orjson.dumps(
            [
                {"stream_id": "a", "ts": 1, "values": [1, 2]},
                {"stream_id": "b", "ts": "yesterday", "values": [1, 2]},
                {"stream_id": "a", "ts": 2, "values": [3, 4]},
            ]
        ),
        None,
        SPEC,
    )
    assert [type(o).__name__ for o in out] == ["Reading", "BadReading", "Reading"]
    bad = out[1]
    assert isinstance(bad, BadReading) and bad.reason == "bad_ts" and bad.item == 1
    assert orjson.loads(bad.raw)["stream_id"] == "b"


BAD_CASES: list[tuple[bytes, str]] = [
    (b"x" * 2001, "oversized"),
    (b"{nope", "not_json"),
    (b"\xff\xfe", "not_json"),
    (b"NaN", "not_json"),
    (b"42", "not_object"),
    (b"[]", "empty_batch"),
    (orjson.dumps([{"ts": 1, "values": [1, 2]}] * 6), "batch_too_large"),
    (orjson.dumps({"ts": 1, "values": [1, 2]}), "missing_stream_id"),
    (orjson.dumps({"stream_id": 5, "ts": 1, "values": [1, 2]}), "bad_stream_id"),
    (orjson.dumps({"stream_id": "", "ts": 1, "values": [1, 2]}), "bad_stream_id"),
    (orjson.dumps({"stream_id": "a", "values": [1, 2]}), "missing_ts"),
    (orjson.dumps({"stream_id": "a", "ts": "soon", "values": [1, 2]}), "bad_ts"),
    (orjson.dumps({"stream_id": "a", "ts": 10**17, "values": [1, 2]}), "bad_ts"),
    (orjson.dumps({"stream_id": "a", "ts": True, "values": [1, 2]}), "bad_ts"),
    # Digits that are not ASCII ('²', Arabic-Indic): int() refused them with an error that
    # once left the decoder and stopped the worker.
    (orjson.dumps({"stream_id": "a", "ts": "\u00b2", "values": [1, 2]}), "bad_ts"),
    (orjson.dumps({"stream_id": "a", "ts": "\u0661\u0662", "values": [1, 2]}), "bad_ts"),
    (orjson.dumps({"stream_id": "a", "ts": [1, "\u00b2"], "values": [[1, 2], [3, 4]]}), "bad_ts"),
    (orjson.dumps({"stream_id": "a", "ts": 1}), "missing_values"),
    (orjson.dumps({"stream_id": "a", "ts": 1, "values": "1,2"}), "bad_values"),
    (orjson.dumps({"stream_id": "a", "ts": 1, "values": {"pressure": 1}}), "unknown_feature"),
    (orjson.dumps({"stream_id": "a", "ts": 1, "values": [1, 2, 3]}), "wrong_feature_count"),
    (orjson.dumps({"stream_id": "a", "ts": 1, "values": ["hot", 2]}), "non_numeric_value"),
    (orjson.dumps({"stream_id": "a", "ts": 1, "values": {"temp": True}}), "non_numeric_value"),
    (b'{"stream_id": "a", "ts": 1, "values": [1e999, 2]}', "not_json"),  # orjson: inf
    (orjson.dumps({"stream_id": "a", "ts": 1, "values": [1e300, 2]}), "non_finite_value"),
]


@pytest.mark.parametrize(("raw", "reason"), BAD_CASES)
def test_every_malformed_input_has_its_reason(raw: bytes, reason: str) -> None:
    out = decode_message(raw, None, SPEC)
    assert len(out) == 1
    bad = out[0]
    assert isinstance(bad, BadReading)
    assert bad.reason == reason, bad.detail
    assert bad.detail  # says what to fix


def test_every_reason_is_exercised() -> None:
    assert {r for _, r in BAD_CASES} == set(REASONS)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.one_of(st.none(), st.binary(max_size=20)))
def test_no_byte_string_makes_the_decoder_raise(raw: bytes, key: bytes | None) -> None:
    for r in decode_message(raw, key, SPEC):
        assert isinstance(r, Reading | BadReading)
        if isinstance(r, BadReading):
            assert r.reason in REASONS


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(st.fixed_dictionaries({}, optional={"stream_id": _json, "ts": _json, "values": _json}))
def test_no_json_document_makes_the_decoder_raise(doc: dict) -> None:
    try:
        raw = orjson.dumps(doc)
    except (TypeError, orjson.JSONEncodeError):
        return
    for r in decode_message(raw, b"k", SPEC):
        if isinstance(r, Reading):
            assert len(r.values) == 2
            assert all(math.isnan(v) or math.isfinite(v) for v in r.values)
