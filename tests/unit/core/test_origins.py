"""Where each decoded reading came from: the origins a dead letter, an alert id and a skip use."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson
import pytest

from detector.core.alerts import Origin
from detector.core.schema import FeatureSpec, ReadingOrigins, decode_batch
from detector.kafka.partitions import PartitionTracker

SPEC = FeatureSpec(("temp", "vibration"))
T0 = 1_795_255_200_000


@dataclass(frozen=True)
class Rec:
    value: bytes
    partition: int
    offset: int
    key: bytes | None = b"pump-1"
    topic: str = "readings"


def _reading(sid: str, k: int) -> dict[str, object]:
    return {"stream_id": sid, "ts": T0 + k, "values": {"temp": 1.0 * k, "vibration": 0.5}}


def _records() -> list[Rec]:
    """A single reading, a row batch of 3 and a columnar message of 2, on two partitions."""
    columnar = {
        "stream_id": "c",
        "ts": [T0, T0 + 1],
        "values": {"temp": [1, 2], "vibration": [3, 4]},
    }
    return [
        Rec(orjson.dumps(_reading("a", 0)), partition=0, offset=10),
        Rec(orjson.dumps([_reading("b", k) for k in range(3)]), partition=1, offset=20),
        Rec(orjson.dumps(columnar), partition=0, offset=11),
    ]


def test_each_reading_names_its_message_and_place_in_it() -> None:
    got = decode_batch(_records(), SPEC).origins
    want = [
        Origin("readings", 0, 10, -1),
        Origin("readings", 1, 20, 0),
        Origin("readings", 1, 20, 1),
        Origin("readings", 1, 20, 2),
        Origin("readings", 0, 11, 0),
        Origin("readings", 0, 11, 1),
    ]
    assert list(got) == want and got == want and got[3] == want[3] and got[-1] == want[-1]
    assert got.partitions().tolist() == [0, 1, 1, 1, 0, 0]
    assert got.offsets().tolist() == [10, 20, 20, 20, 11, 11]
    assert list(got[1:3]) == want[1:3] and list(got[::-1]) == want[::-1]


def test_select_takes_positions_in_any_order_and_refuses_a_mask() -> None:
    got = decode_batch(_records(), SPEC).origins
    assert list(got.select([4, 0])) == [Origin("readings", 0, 11, 0), Origin("readings", 0, 10, -1)]
    assert len(got.select([])) == 0 and got.select(np.array([], np.int64)).offsets().size == 0
    with pytest.raises(TypeError, match="not a boolean mask"):
        got.select([True, False, True, False, False, False])


def test_an_empty_batch_has_no_origins() -> None:
    got = decode_batch([], SPEC).origins
    assert len(got) == 0 and got == [] and got.partitions().size == 0


def test_equal_to_the_same_origins_only() -> None:
    o = ReadingOrigins([("t", 0, 7)], np.array([0, 0]), np.array([0, 1]))
    same = [Origin("t", 0, 7, 0), Origin("t", 0, 7, 1)]
    assert o == same and o == tuple(same) and o == ReadingOrigins(o.messages, o.message, o.position)
    assert o != same[:1] and o != "tt" and o != set(same)
    with pytest.raises(ValueError, match="2 message numbers for 1 positions"):
        ReadingOrigins([("t", 0, 7)], np.array([0, 0]), np.array([0]))


def test_a_stream_floor_drops_only_that_streams_older_readings() -> None:
    # After a restore, a stream checkpointed at offset 20 of partition 1 skips readings below it.
    t = PartitionTracker("readings")
    t.restored({}, {"b": 20, "a": 5}, {})
    batch = decode_batch(
        [
            Rec(orjson.dumps([_reading("b", k) for k in range(2)]), partition=1, offset=19),
            Rec(orjson.dumps(_reading("a", 0)), partition=0, offset=10),
            Rec(orjson.dumps(_reading("b", 2)), partition=1, offset=20),
        ],
        SPEC,
    )
    kept = t.drop_reflected(batch)
    assert kept.stream_ids == ["a", "b"]
    assert list(kept.origins) == [Origin("readings", 0, 10, -1), Origin("readings", 1, 20, -1)]
    assert kept.values[:, 0].tolist() == [0.0, 2.0]
