"""Columnar messages (contract v1.1): the same readings as v1, or the whole message refused."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.core.schema import (
    REASONS,
    BadReading,
    DecodedBatch,
    FeatureSpec,
    Reading,
    decode_batch,
    decode_message,
)
from detector.core.timefmt import iso_ms
from detector.sandbox.messages import to_json_messages
from detector.sandbox.simulation import Fleet, FleetSpec

SPEC = FeatureSpec(("temp", "vibration"), max_bytes=4000, max_batch=5)
T0 = 1_795_255_200_000
NAN = float("nan")


@dataclass(frozen=True)
class Rec:
    """A consumed message as decode_batch takes it."""

    value: bytes
    key: bytes | None = b"pump-1"
    topic: str = "readings"
    partition: int = 0
    offset: int = 0


def _batch(*docs: Any, spec: FeatureSpec = SPEC) -> DecodedBatch:
    recs = [Rec(orjson.dumps(d), offset=i) for i, d in enumerate(docs)]
    return decode_batch(recs, spec)


def _same(a: DecodedBatch, b: DecodedBatch) -> None:
    """Same readings, timestamps, order and reading positions (nan equal to nan)."""
    assert a.stream_ids == b.stream_ids
    assert a.ts.dtype == b.ts.dtype == np.int64 and a.ts.tolist() == b.ts.tolist()
    assert a.values.dtype == b.values.dtype == np.float64
    np.testing.assert_array_equal(a.values, b.values)
    assert [(o.offset, o.index) for o in a.origins] == [(o.offset, o.index) for o in b.origins]


def test_columns_decode_as_the_same_readings_sent_as_a_v1_batch() -> None:
    col = {
        "stream_id": "pump-17",
        "ts": [T0, T0 + 1000, T0 + 2000],
        "values": {"temp": [71.2, 71.3, None], "vibration": [0.03, None, 0.05]},
    }
    rows = [
        {"stream_id": "pump-17", "ts": T0, "values": {"temp": 71.2, "vibration": 0.03}},
        {"stream_id": "pump-17", "ts": T0 + 1000, "values": {"temp": 71.3, "vibration": None}},
        {"stream_id": "pump-17", "ts": T0 + 2000, "values": {"vibration": 0.05}},
    ]
    got = _batch(col)
    _same(got, _batch(rows))
    assert [o.index for o in got.origins] == [0, 1, 2] and not got.refused
    assert math.isnan(got.values[1, 1]) and math.isnan(got.values[2, 0])  # null -> nan
    singles = [r for d in rows for r in decode_message(orjson.dumps(d), None, SPEC)]
    assert _plain(decode_message(orjson.dumps(col), None, SPEC)) == _plain(singles)


def _plain(out: list[Reading | BadReading]) -> list[tuple[str, int, list[float | None]]]:
    """Readings with nan as None, so that they compare equal."""
    readings = [r for r in out if isinstance(r, Reading)]
    assert len(readings) == len(out)
    return [
        (r.stream_id, r.ts_ms, [None if math.isnan(v) else v for v in r.values]) for r in readings
    ]


def test_an_absent_feature_is_missing_throughout_and_the_key_names_the_stream() -> None:
    b = _batch({"ts": [T0, T0 + 1], "values": {"vibration": [1, 2]}})
    assert b.stream_ids == ["pump-1", "pump-1"]  # the record's key
    assert np.isnan(b.values[:, 0]).all() and b.values[:, 1].tolist() == [1.0, 2.0]


def test_iso_epoch_and_float_ts_give_the_same_times() -> None:
    ms = [T0 + 123, T0 + 1456]
    forms: list[list[Any]] = [
        ms,
        [iso_ms(t) for t in ms],
        [iso_ms(ms[0]), ms[1]],  # mixed
        [float(t) for t in ms],
        [str(t) for t in ms],  # digits, as v1 accepts
    ]
    for ts in forms:
        b = _batch({"ts": ts, "values": {"temp": [1, 2]}})
        assert b.ts.tolist() == ms, ts


def test_array_of_arrays_in_feature_order() -> None:
    got = _batch({"ts": [T0, T0 + 1], "values": [[1.5, None], [2, 3e-3]]})
    want = _batch([{"ts": T0, "values": [1.5, None]}, {"ts": T0 + 1, "values": [2, 3e-3]}])
    _same(got, want)


def test_columnar_rows_and_singles_mix_in_message_order() -> None:
    docs = [
        {"ts": T0, "values": [1, 2]},
        {"stream_id": "b", "ts": [T0, T0 + 1], "values": [[3, 4], [5, 6]]},
        [{"ts": T0 + 1, "values": [7, 8]}],
        {"stream_id": "c", "ts": [T0], "values": {"temp": [9]}},
        "not a reading",
    ]
    b = _batch(*docs)
    assert b.stream_ids == ["pump-1", "b", "b", "pump-1", "c"]
    assert b.values[:, 0].tolist() == [1, 3, 5, 7, 9]
    assert [(o.offset, o.index) for o in b.origins] == [(0, -1), (1, 0), (1, 1), (2, 0), (3, 0)]
    assert [(r.bad.reason, r.origin.offset) for r in b.refused] == [("not_object", 4)]


def _good(**change: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "stream_id": "a",
        "ts": [T0, T0 + 1],
        "values": {"temp": [1, 2], "vibration": [3, None]},
    }
    doc.update(change)
    return doc


BAD_COLUMNS: list[tuple[str, dict[str, Any], str]] = [
    ("empty ts", _good(ts=[]), "empty_batch"),
    ("too many readings", _good(ts=list(range(T0, T0 + 6))), "batch_too_large"),
    (
        "missing stream id",
        {k: v for k, v in _good().items() if k != "stream_id"},
        "missing_stream_id",
    ),
    ("bad stream id", _good(stream_id=7), "bad_stream_id"),
    ("ts text", _good(ts=[T0, "soon"]), "bad_ts"),
    ("ts null cell", _good(ts=[T0, None]), "bad_ts"),
    ("ts bool cell", _good(ts=[T0, True]), "bad_ts"),
    ("ts in microseconds", _good(ts=[T0, T0 * 1000]), "bad_ts"),
    ("ts float out of range", _good(ts=[T0, -5e12]), "bad_ts"),
    ("ts beyond int64", _good(ts=[T0, 2**63]), "bad_ts"),
    ("no values", {"stream_id": "a", "ts": [T0]}, "missing_values"),
    ("values text", _good(values="1,2"), "bad_values"),
    ("column not an array", _good(values={"temp": 1.5}), "bad_values"),
    ("column too short", _good(values={"temp": [1]}), "bad_values"),
    ("column too long", _good(values={"temp": [1, 2, 3]}), "bad_values"),
    ("unknown column", _good(values={"pressure": [1, 2]}), "unknown_feature"),
    ("column of text", _good(values={"temp": ["hot", "cold"]}), "non_numeric_value"),
    ("a text cell", _good(values={"temp": [1, "2"]}), "non_numeric_value"),
    ("a bool cell", _good(values={"vibration": [True, 1]}), "non_numeric_value"),
    ("a nested cell", _good(values={"vibration": [[1], 1]}), "non_numeric_value"),
    ("beyond float32", _good(values={"temp": [1, 1e300]}), "non_finite_value"),
    ("rows too few", _good(values=[[1, 2]]), "bad_values"),
    ("a row not an array", _good(values=[[1, 2], 3]), "bad_values"),
    ("a row too short", _good(values=[[1, 2], [3]]), "wrong_feature_count"),
    ("a text cell in a row", _good(values=[[1, 2], [3, "x"]]), "non_numeric_value"),
    ("beyond float32 in a row", _good(values=[[1, -1e39], [3, 4]]), "non_finite_value"),
]


@pytest.mark.parametrize(("case", "doc", "reason"), BAD_COLUMNS, ids=[c[0] for c in BAD_COLUMNS])
def test_a_bad_column_or_cell_refuses_the_whole_message(
    case: str, doc: dict[str, Any], reason: str
) -> None:
    raw = orjson.dumps(doc)
    out = decode_message(raw, None, SPEC)
    assert len(out) == 1
    bad = out[0]
    assert isinstance(bad, BadReading) and bad.reason == reason, (case, bad)
    assert bad.reason in REASONS and bad.detail and bad.item is None
    assert bad.raw == raw or reason == "batch_too_large"  # the whole message, dead-lettered
    b = decode_batch([Rec(raw, key=None, offset=9)], SPEC)
    assert len(b) == 0 and b.values.shape == (0, 2)
    assert [(r.bad.reason, r.origin.offset, r.origin.index) for r in b.refused] == [(reason, 9, -1)]


def test_the_detail_names_the_offending_column_and_entry() -> None:
    (bad,) = decode_message(orjson.dumps(_good(values={"temp": [1, "2"]})), None, SPEC)
    assert isinstance(bad, BadReading) and "'temp' entry 1" in bad.detail
    (bad,) = decode_message(orjson.dumps(_good(values=[[1, 2], [3, "x"]])), None, SPEC)
    assert isinstance(bad, BadReading) and "entry 1 ('vibration')" in bad.detail
    (bad,) = decode_message(orjson.dumps(_good(ts=[T0, "soon"])), None, SPEC)
    assert isinstance(bad, BadReading) and "'ts' entry 1" in bad.detail


def test_an_oversized_columnar_message_is_refused_before_parsing() -> None:
    doc = _good(ts=[T0] * 5, values={"temp": [1.123456789] * 5000})
    (bad,) = decode_message(orjson.dumps(doc), None, SPEC)
    assert isinstance(bad, BadReading) and bad.reason == "oversized"


_cell = st.one_of(
    st.none(),
    st.floats(-1e30, 1e30, allow_nan=False),
    st.integers(-(10**6), 10**6),
)
_reading = st.tuples(
    st.integers(0, 4_102_444_800_000), st.booleans(), st.lists(_cell, min_size=2, max_size=2)
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_reading, min_size=1, max_size=5), min_size=1, max_size=4))
def test_columnar_and_row_wise_batches_decode_to_the_same_columns(
    messages: list[list[tuple[int, bool, list[Any]]]],
) -> None:
    def ts(t: int, iso: bool) -> int | str:
        return iso_ms(t) if iso else t

    rows, by_name, in_order = [], [], []
    for i, msg in enumerate(messages):
        sid = f"s{i % 2}"
        rows.append(
            [
                {
                    "stream_id": sid,
                    "ts": ts(t, iso),
                    "values": dict(zip(SPEC.names, v, strict=True)),
                }
                for t, iso, v in msg
            ]
        )
        stamps = [ts(t, iso) for t, iso, _ in msg]
        columns = {name: [v[f] for _, _, v in msg] for f, name in enumerate(SPEC.names)}
        by_name.append({"stream_id": sid, "ts": stamps, "values": columns})
        in_order.append({"stream_id": sid, "ts": stamps, "values": [v for _, _, v in msg]})
    want = _batch(*rows)
    assert len(want) == sum(map(len, messages)) and not want.refused
    _same(_batch(*by_name), want)
    _same(_batch(*in_order), want)


@pytest.mark.parametrize("batch_size", [1, 7])
def test_the_simulators_columnar_messages_decode_as_its_rows(batch_size: int) -> None:
    block = Fleet(FleetSpec(streams=3, seed=2, period_s=60.0)).step(10)
    spec = FeatureSpec(block.features)

    def decoded(layout: str) -> DecodedBatch:
        msgs = to_json_messages(block, batch_size, layout=layout)  # type: ignore[arg-type]
        return decode_batch([Rec(v, key=k, offset=i) for i, (k, v) in enumerate(msgs)], spec)

    col, rows = decoded("columnar"), decoded("rows")
    if batch_size == 1:  # a one-reading column is still a columnar message: index 0, not -1
        assert {o.index for o in col.origins} == {0} and {o.index for o in rows.origins} == {-1}
        col = DecodedBatch(col.stream_ids, col.ts, col.values, rows.origins, col.refused)
    _same(col, rows)
    assert len(col) == block.n_readings
