"""State checkpoints' encoding: records round-trip bit for bit, models are told apart by
their state's shape, and garbage is refused with a reason."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from detector.checkpointing.codec import (
    MAGIC,
    CheckpointError,
    PartitionMark,
    StateShape,
    StreamState,
    decode,
    encode_mark,
    encode_streams,
    mark_key,
    stream_key,
)
from tests.unit.checkpointing.engines import feed, small_engine
from tests.unit.factories import make_bundle

TOPIC = "readings"


def test_stream_records_round_trip_bit_for_bit() -> None:
    eng = small_engine()
    feed(eng, ["a", "b", "c"], 1)
    feed(eng, ["a", "b"], 2)
    snap = eng.store.snapshot(["a", "b", "c"])
    shape = StateShape.of(eng.bundle, eng.store.stat_width)
    values = encode_streams(shape, "test", 7, TOPIC, snap, [0, 1, 1], [10, 20, 20])
    for i, v in enumerate(values):
        st = decode(v)
        assert isinstance(st, StreamState)
        assert (st.stream_id, st.partition, st.offset) == (
            snap.stream_ids[i],
            [0, 1, 1][i],
            [10, 20, 20][i],
        )
        assert (st.model, st.version, st.shape, st.last_ts) == (
            "test",
            7,
            shape,
            int(snap.last_ts[i]),
        )
        lh = shape.layers * shape.hidden
        assert np.array_equal(st.vector[:lh], snap.h[:, i].reshape(-1).numpy())
        assert np.array_equal(st.vector[lh : 2 * lh], snap.c[:, i].reshape(-1).numpy())
        assert np.array_equal(st.vector[2 * lh :], snap.stats[i].numpy())
    assert decode(encode_mark(PartitionMark(TOPIC, 3, 99))) == PartitionMark(TOPIC, 3, 99)


def test_state_shape_tells_models_apart_by_features_and_architecture() -> None:
    a = StateShape.of(make_bundle(features=3, hidden=8), 5)
    assert a == StateShape.of(make_bundle(features=3, hidden=8, seed=5, version=2), 5)
    assert a != StateShape.of(make_bundle(features=3, hidden=16), 5)
    assert a != StateShape.of(make_bundle(features=4, hidden=8), 5)
    assert a != StateShape.of(make_bundle(features=3, hidden=8, periods_s=(3600.0,)), 5)
    assert a != StateShape.of(make_bundle(features=3, hidden=8), 6)  # other statistics


def _header(kind: int, header: bytes, payload: bytes = b"") -> bytes:
    return struct.pack("<4sBH", MAGIC, kind, len(header)) + header + payload


# A valid stream record's header: 1 layer x 2 hidden (h, c) + 1 statistic = 5 float32.
_STREAM_HEADER = orjson.dumps(
    {
        "stream": "a",
        "topic": "t",
        "partition": 0,
        "offset": 1,
        "last_ts": 0,
        "model": "m",
        "version": 1,
        "layers": 1,
        "hidden": 2,
        "stat_width": 1,
        "shape": "x",
    }
)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"ADS",
        b"\x80\x04pickle",
        b"ADS2\x01\x00\x00",
        _header(1, b"{not json"),
        _header(1, b"[1,2]"),
        _header(9, b"{}"),
        _header(2, orjson.dumps({"topic": "t", "partition": "0", "offset": 1})),
        _header(2, orjson.dumps({"topic": "t", "partition": 0, "offset": 1}), b"extra"),
        _header(1, _STREAM_HEADER, b"\x00" * 19),  # the shape needs 5 float32
        _header(1, _STREAM_HEADER, np.array([1, 2, 3, 4, np.nan], "<f4").tobytes()),
    ],
    ids=[
        "empty",
        "short",
        "pickle",
        "other-format",
        "bad-json",
        "not-object",
        "kind",
        "typed-wrong",
        "mark-payload",
        "truncated",
        "non-finite",
    ],
)
def test_garbage_is_refused_with_a_reason(value: bytes) -> None:
    with pytest.raises(CheckpointError):
        decode(value)


def test_keys_of_streams_and_marks_never_collide() -> None:
    assert stream_key("p:readings:0") != mark_key("readings", 0)
    assert stream_key("pump-1") == b"s:pump-1"


def test_a_record_from_before_headers_named_the_layout_restores_under_layout_1() -> None:
    old = decode(_header(1, _STREAM_HEADER, np.zeros(5, "<f4").tobytes()))
    assert isinstance(old, StreamState) and old.shape.layout == 1
