"""State checkpoints: the checkpointer's ordering and restore logic (the encoding: test_codec.py).

The Kafka store is exercised end to end in tests/integration/test_reliability.py; here an
in-memory producer/topic stands in for it, and the directory store runs for real.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from detector.checkpointing.codec import (
    PartitionMark,
    StateShape,
    StreamState,
    decode,
    encode_mark,
    encode_streams,
    mark_key,
    stream_key,
)
from detector.checkpointing.stores import DirCheckpointer, KafkaCheckpointer, make_checkpointer
from detector.config import Settings, StateSettings, TopicSettings
from detector.core.engine import Engine
from detector.kafka.partitions import PartitionTracker
from detector.kafka.transport import TopicPartition
from detector.observability.metrics import Metrics
from tests.unit.checkpointing.engines import feed, small_engine

TOPIC = "readings"


class Host:
    """What a checkpointer is given: the engine, the partition tracker, metrics."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.partitions = PartitionTracker(TOPIC)
        self.metrics = Metrics()

    def batch(self, ids: list[str], partition: int, t: int) -> np.ndarray:
        self.partitions.record(ids, [partition] * len(ids))
        return feed(self.engine, ids, t)

    def kafka(self, prod: FakeProducer, **state: Any) -> MemoryCheckpointer:
        """A Kafka checkpointer over ``prod``'s log."""
        return MemoryCheckpointer(
            _settings(**state),
            prod,  # type: ignore[arg-type]
            self.engine,
            self.partitions,
            self.metrics,
            lambda: 1000.0,
        )


class FakeProducer:
    """Appends to an in-memory topic; ``flushes`` counts acknowledged flushes."""

    def __init__(self) -> None:
        self.log: list[tuple[str, bytes, bytes | None]] = []
        self.flushes = 0

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Any = None) -> None:
        assert key is not None
        self.log.append((topic, key, value))

    def flush(self, timeout_s: float = 120.0) -> int:
        self.flushes += 1
        return 0


class MemoryCheckpointer(KafkaCheckpointer):
    """The Kafka checkpointer reading its topic back from the fake producer's log."""

    def _load(self, parts: set[tuple[str, int]]) -> tuple[list[PartitionMark], list[StreamState]]:
        latest: dict[bytes, PartitionMark | StreamState] = {}
        for _, key, value in self._producer.log:  # type: ignore[attr-defined]
            if value is None:
                latest.pop(key, None)
                continue
            rec = decode(value)
            if (rec.topic, rec.partition) in parts:
                latest[key] = rec
            else:
                latest.pop(key, None)
        return (
            [r for r in latest.values() if isinstance(r, PartitionMark)],
            [r for r in latest.values() if isinstance(r, StreamState)],
        )


def _settings(**state: Any) -> Settings:
    return Settings(topics=TopicSettings(readings=TOPIC), state=StateSettings(**state))


def _offsets(**by_partition: int) -> dict[TopicPartition, int]:
    return {TopicPartition(TOPIC, int(p[1:])): o for p, o in by_partition.items()}


# -- the checkpointer -------------------------------------------------------------------


def test_commit_waits_for_a_checkpoint_and_the_state_is_flushed_before_it() -> None:
    w, prod = Host(small_engine()), FakeProducer()
    clock = [0.0]
    cp = w.kafka(prod, interval_s=10)
    cp._now = lambda: clock[0]
    w.batch(["a", "b"], 0, 1)
    cp.mark_dirty(["a", "b"])
    assert cp.after_flush(_offsets(p0=5)) == _offsets(p0=5)  # the first: at once
    assert prod.flushes == 1
    clock[0] = 3.0
    w.batch(["a"], 0, 2)
    w.batch(["x"], 1, 2)
    cp.mark_dirty(["a", "x"])
    assert cp.after_flush(_offsets(p0=9, p1=4)) == {}  # too soon: no commit either
    assert prod.flushes == 1
    clock[0] = 4.0
    assert cp.after_flush({}, idle=True) == _offsets(p0=9, p1=4)  # idle: right away
    assert prod.flushes == 2
    marks = {k: decode(v) for _, k, v in prod.log if k.startswith(b"p:") and v}
    assert marks[mark_key(TOPIC, 0)] == PartitionMark(TOPIC, 0, 9)
    # Only the dirty streams were written the second time, each before its mark.
    second = [k for _, k, _ in prod.log[3:]]
    assert sorted(second[:2]) == [b"s:a", b"s:x"] and set(second[2:]) == {
        mark_key(TOPIC, 0),
        mark_key(TOPIC, 1),
    }
    assert w.metrics.checkpoint_bytes._value.get() > 0


def test_evicted_streams_get_tombstones() -> None:
    w, prod = Host(small_engine(max_streams=2)), FakeProducer()
    cp = w.kafka(prod)
    w.batch(["a", "b"], 0, 1)
    cp.mark_dirty(["a", "b"])
    cp.after_flush(_offsets(p0=2))
    res = w.engine.process(["c"], np.array([0]), np.zeros((1, 3), np.float32), now_ms=5)
    cp.mark_dirty(["c", *res.evicted])
    cp.checkpoint()
    tomb = [k for _, k, v in prod.log if v is None]
    assert tomb == [stream_key(s) for s in res.evicted] and len(tomb) == 1


def test_restore_continues_exactly_and_skips_what_the_state_reflects() -> None:
    ids = [f"s{i}" for i in range(6)]
    ref = small_engine()
    for t in range(1, 5):
        feed(ref, ids, t)
    want = feed(ref, ids, 5)

    w, prod = Host(small_engine()), FakeProducer()
    cp = w.kafka(prod)
    for t in range(1, 5):
        w.partitions.record(ids, [0, 0, 0, 1, 1, 1])
        feed(w.engine, ids, t)  # one batch across both partitions, as the reference
        cp.mark_dirty(ids)
        cp.after_flush(_offsets(p0=t * 3, p1=t * 3), idle=True)

    fresh = Host(small_engine())  # a new process: empty store
    cp2 = fresh.kafka(prod)
    got = cp2.on_assigned([TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])
    assert got.partition_floors == {TopicPartition(TOPIC, 0): 12, TopicPartition(TOPIC, 1): 12}
    assert got.stream_floors == {} and got.refused == 0
    assert got.partitions == dict.fromkeys(ids[:3], 0) | dict.fromkeys(ids[3:], 1)
    assert np.array_equal(feed(fresh.engine, ids, 5), want)  # bit for bit

    only_p1 = Host(small_engine())
    got1 = only_p1.kafka(prod).on_assigned([TopicPartition(TOPIC, 1)])
    assert set(got1.partitions) == set(ids[3:])


def test_state_of_another_model_shape_is_not_restored() -> None:
    w, prod = Host(small_engine(hidden=8)), FakeProducer()
    cp = w.kafka(prod)
    w.batch(["a", "b"], 0, 1)
    cp.mark_dirty(["a", "b"])
    cp.after_flush(_offsets(p0=2))
    other = Host(small_engine(hidden=16))
    got = other.kafka(prod).on_assigned([TopicPartition(TOPIC, 0)])
    assert got.refused == 2 and got.partitions == {}
    assert other.engine is not None and len(other.engine.store) == 0
    assert got.partition_floors == {TopicPartition(TOPIC, 0): 2}  # the alerts went out


def test_a_stream_written_after_its_mark_gets_its_own_floor() -> None:
    # A late writer (a worker that lost its partition without knowing) can leave a stream
    # record newer than the partition's mark: that stream skips up to its own offset.
    w, prod = Host(small_engine()), FakeProducer()
    cp = w.kafka(prod)
    w.batch(["a", "b"], 0, 1)
    cp.mark_dirty(["a", "b"])
    cp.after_flush(_offsets(p0=2))
    w.batch(["a"], 0, 2)
    snap = w.engine.store.snapshot(["a"])
    late = encode_streams(
        StateShape.of(w.engine.bundle, w.engine.store.stat_width), "test", 1, TOPIC, snap, [0], [3]
    )
    prod.log.append(("state", stream_key("a"), late[0]))
    got = Host(small_engine()).kafka(prod).on_assigned([TopicPartition(TOPIC, 0)])
    assert got.stream_floors == {"a": 3}


def test_restore_never_exceeds_max_streams() -> None:
    w, prod = Host(small_engine()), FakeProducer()
    cp = w.kafka(prod)
    ids = [f"s{i}" for i in range(50)]
    w.batch(ids, 0, 1)
    cp.mark_dirty(ids)
    cp.after_flush(_offsets(p0=50))
    small = Host(small_engine(max_streams=10))
    got = small.kafka(prod).on_assigned([TopicPartition(TOPIC, 0)])
    assert small.engine is not None and len(small.engine.store) == 10
    assert set(got.partitions) == set(small.engine.store.stream_ids())


def test_directory_store_writes_one_file_per_partition_and_restores_it(tmp_path: Path) -> None:
    ids = ["a", "b", "c"]
    ref = small_engine()
    feed(ref, ids, 1)
    want = feed(ref, ids, 2)
    w = Host(small_engine())
    settings = _settings(checkpoint="dir", dir=tmp_path)
    cp = make_checkpointer(settings, FakeProducer(), w.engine, w.partitions)  # type: ignore[arg-type]
    assert isinstance(cp, DirCheckpointer)
    w.partitions.record(ids, [0, 0, 1])
    feed(w.engine, ids, 1)
    cp.mark_dirty(ids)
    cp.after_flush(_offsets(p0=2, p1=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{TOPIC}.0.state", f"{TOPIC}.1.state"]
    fresh = Host(small_engine())
    got = DirCheckpointer(settings, tmp_path, fresh.engine, fresh.partitions).on_assigned(
        [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)]
    )
    assert got.partition_floors == {TopicPartition(TOPIC, 0): 2, TopicPartition(TOPIC, 1): 1}
    assert np.array_equal(feed(fresh.engine, ids, 2), want)


def test_a_damaged_state_file_keeps_what_it_can_and_the_rest_starts_cold(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # was an error without the file's name (or a struct.error reported as a bug) at every
    # start: the worker could not start until someone found and removed the file
    ids = ["a", "b", "c"]
    w = Host(small_engine())
    settings = _settings(checkpoint="dir", dir=tmp_path)
    cp = DirCheckpointer(settings, tmp_path, w.engine, w.partitions)
    w.partitions.record(ids, [0, 0, 1])
    feed(w.engine, ids, 1)
    cp.mark_dirty(ids)
    cp.after_flush(_offsets(p0=2, p1=1))
    p0, p1 = tmp_path / f"{TOPIC}.0.state", tmp_path / f"{TOPIC}.1.state"
    p0.write_bytes(p0.read_bytes() + b"\x00\x00")  # trailing bytes after whole records
    p1.write_bytes(p1.read_bytes()[:-5])  # stream c's record cut short
    fresh = Host(small_engine())
    got = DirCheckpointer(settings, tmp_path, fresh.engine, fresh.partitions).on_assigned(
        [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)]
    )
    assert got.partition_floors == {TopicPartition(TOPIC, 0): 2, TopicPartition(TOPIC, 1): 1}
    assert sorted(got.partitions) == ["a", "b"]  # c starts cold
    assert [str(p) in caplog.text for p in (p0, p1)] == [True, True]


def test_idle_time_survives_a_restore(tmp_path: Path) -> None:
    # A restore once set every stream seen "now": a worker restarted more often than
    # engine.idle_ttl_s never expired a dead stream, nor closed its open incident.
    w = Host(small_engine())
    settings = _settings(checkpoint="dir", dir=tmp_path)
    cp = DirCheckpointer(settings, tmp_path, w.engine, w.partitions, clock=lambda: 100.0)
    w.partitions.record(["a", "b"], [0, 0])
    feed(w.engine, ["a"], 1)  # seen at 1 ms
    feed(w.engine, ["b"], 50_000)  # seen at 50 s
    cp.mark_dirty(["a", "b"])
    cp.after_flush(_offsets(p0=2))
    fresh = Host(small_engine())
    again = DirCheckpointer(settings, tmp_path, fresh.engine, fresh.partitions, clock=lambda: 100.0)
    again.on_assigned([TopicPartition(TOPIC, 0)])  # restored at 100 s
    assert fresh.engine.store.evict_idle(100_000, 60_000) == ["a"]  # idle 60 s: "a" only


def test_an_evicted_stream_leaves_its_file_even_with_no_new_offsets(tmp_path: Path) -> None:
    # Only partitions with new offsets were rewritten: an expired stream stayed in its
    # file and came back, open incident and all, at the next start.
    w = Host(small_engine())
    settings = _settings(checkpoint="dir", dir=tmp_path)
    cp = DirCheckpointer(settings, tmp_path, w.engine, w.partitions)
    w.partitions.assign([TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])
    w.partitions.record(["a", "b", "c"], [0, 0, 1])
    feed(w.engine, ["a", "b", "c"], 1)
    cp.mark_dirty(["a", "b", "c"])
    cp.after_flush(_offsets(p0=2, p1=1))
    p0 = tmp_path / f"{TOPIC}.0.state"
    before = p0.read_bytes()
    gone = w.engine.store.evict(["a"])
    cp.mark_gone(gone)
    w.partitions.forget(gone)
    feed(w.engine, ["c"], 2)
    cp.mark_dirty(["c"])
    cp.checkpoint()  # dirty, no new offsets
    assert p0.read_bytes() != before
    fresh = Host(small_engine())
    got = DirCheckpointer(settings, tmp_path, fresh.engine, fresh.partitions).on_assigned(
        [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)]
    )
    assert sorted(got.partitions) == ["b", "c"]  # b's record and p0's mark kept
    assert got.partition_floors[TopicPartition(TOPIC, 0)] == 2


def test_a_file_of_a_partition_given_up_is_left_to_its_next_owner(tmp_path: Path) -> None:
    w = Host(small_engine())
    settings = _settings(checkpoint="dir", dir=tmp_path)
    cp = DirCheckpointer(settings, tmp_path, w.engine, w.partitions)
    w.partitions.assign([TopicPartition(TOPIC, 0)])
    w.partitions.record(["a"], [0])
    feed(w.engine, ["a"], 1)
    cp.mark_dirty(["a"])
    cp.after_flush(_offsets(p0=1))
    p0 = tmp_path / f"{TOPIC}.0.state"
    before = p0.read_bytes()
    cp.mark_gone(w.engine.store.evict(["a"]))
    w.partitions.revoke([TopicPartition(TOPIC, 0)])
    cp.checkpoint()
    assert p0.read_bytes() == before


def test_checkpointer_choice_follows_the_settings(tmp_path: Path) -> None:
    h = Host(small_engine())
    served = (h.engine, h.partitions)
    assert make_checkpointer(_settings(checkpoint="off"), FakeProducer(), *served) is None  # type: ignore[arg-type]
    assert isinstance(
        make_checkpointer(_settings(), FakeProducer(), *served),  # type: ignore[arg-type]
        KafkaCheckpointer,
    )
    assert Settings().state.checkpoint == "kafka"
    with pytest.raises(ValidationError, match="ANOMALYD_STATE__DIR"):  # refused with the settings
        _settings(checkpoint="dir")


def test_snapshot_tensors_are_plain_float32() -> None:
    eng = small_engine()
    feed(eng, ["a"], 1)
    snap = eng.store.snapshot(["a"])
    assert snap.h.dtype == torch.float32 and snap.stats.dtype == torch.float32


def test_offsets_checkpointed_on_revocation_are_committed_if_the_partition_comes_back() -> None:
    # kafka-python cannot commit inside the rebalance callback: a partition that comes
    # back to the same worker (which may resume past its last record) still gets its
    # offset committed, with the next checkpoint.
    w, prod = Host(small_engine()), FakeProducer()
    clock = [0.0]
    cp = w.kafka(prod, interval_s=10)
    cp._now = lambda: clock[0]
    cp.after_flush(_offsets(p0=1, p1=1))
    w.batch(["a"], 0, 1)
    w.batch(["b"], 1, 1)
    cp.mark_dirty(["a", "b"])
    assert cp.after_flush(_offsets(p0=7, p1=3)) == {}  # waits for the interval
    cp.on_revoked()
    assert decode(prod.log[-1][2] or b"") == PartitionMark(TOPIC, 1, 3)  # written, though
    cp.on_assigned([TopicPartition(TOPIC, 0)])
    assert cp.after_flush({}, idle=True) == _offsets(p0=7)


def test_state_of_another_statistics_layout_is_refused_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Same model, same width: only the layout version tells that the columns moved.
    from dataclasses import replace

    from detector.core.statsrow import LAYOUT_VERSION

    w, prod = Host(small_engine()), FakeProducer()
    w.batch(["a", "b"], 0, 1)
    snap = w.engine.store.snapshot(["a", "b"])
    shape = StateShape.of(w.engine.bundle, w.engine.store.stat_width)
    moved = replace(shape, layout=LAYOUT_VERSION + 1)
    assert moved.width == shape.width and moved.digest == shape.digest
    for sid, rec in zip(
        ["a", "b"], encode_streams(moved, "test", 1, TOPIC, snap, [0, 0], [2, 2]), strict=True
    ):
        assert decode(rec).shape == moved  # type: ignore[union-attr]
        prod.log.append(("state", stream_key(sid), rec))
    prod.log.append(("state", mark_key(TOPIC, 0), encode_mark(PartitionMark(TOPIC, 0, 2))))
    fresh = Host(small_engine())
    with caplog.at_level("WARNING", logger="anomalyd.checkpoint"):
        got = fresh.kafka(prod).on_assigned([TopicPartition(TOPIC, 0)])
    assert got.refused == 2 and got.partitions == {} and len(fresh.engine.store) == 0
    assert f"statistics layout {LAYOUT_VERSION + 1}" in caplog.text
    assert f"reads layout {LAYOUT_VERSION}" in caplog.text
