"""The worker's exactly-once delivery over the in-memory transport: an aborted batch shows
nothing and its replay alerts once; a failed send is not checkpointed."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from detector.artifacts import publish
from detector.checkpointing.codec import PartitionMark, StreamState
from detector.checkpointing.stores import KafkaCheckpointer, _keep_latest
from detector.config import StateSettings
from detector.errors import BrokerError, ConfigError
from detector.kafka.memory import MemoryBroker, MemoryTransport
from detector.observability.metrics import Metrics
from detector.worker import Worker
from tests.unit.factories import make_bundle
from tests.unit.workerkit import (
    ALERTS,
    DLQ,
    P0,
    P1,
    READINGS,
    T0,
    metric_sample,
    produce_reading,
    worker_settings,
)


class _MemoryStateCheckpointer(KafkaCheckpointer):
    """The Kafka store restoring from the in-memory broker (what read_committed shows)."""

    def __init__(self, broker: MemoryBroker, w: Worker) -> None:
        assert w.engine is not None
        super().__init__(w.s, w.transport, w.engine, w.partitions, w.metrics, w.clock)
        self.broker = broker

    def _load(self, parts: set[tuple[str, int]]) -> tuple[list[PartitionMark], list[StreamState]]:
        latest: dict[bytes, PartitionMark | StreamState] = {}
        for m in self.broker.messages("state"):
            _keep_latest(latest, m.key or b"", m.value, parts, f"{m.partition}/{m.offset}")
        marks = [r for r in latest.values() if isinstance(r, PartitionMark)]
        return marks, [r for r in latest.values() if isinstance(r, StreamState)]


def _eos_worker(tmp: Path, broker: MemoryBroker) -> tuple[Worker, MemoryTransport]:
    models = tmp / "models"
    if not models.exists():
        publish(models, make_bundle(features=2, hidden=8, layers=1))
    s = worker_settings(tmp).model_copy(
        update={"delivery": "exactly_once", "state": StateSettings(checkpoint="kafka")}
    )
    mem = MemoryTransport(broker, transactional=True)
    w = Worker(s, mem, Metrics(), clock=lambda: T0 / 1000 + 60)
    assert w.start()
    w.checkpointer = _MemoryStateCheckpointer(broker, w)
    return w, mem


def _feed_eos(broker: MemoryBroker, ticks: range, bad: bool = False) -> None:
    """Streams a and b on partitions 0 and 1, a tick each; ``bad``: a dead letter per tick."""
    for t in ticks:
        produce_reading(broker, "a", t, 0)
        produce_reading(broker, "b", t, 1)
        if bad:
            broker.produce(READINGS, b"k", b"{not json", partition=0)


def _eos_reference_and_start(
    tmp: Path, feed: Callable[[MemoryBroker, range], None]
) -> tuple[MemoryBroker, MemoryBroker, Worker, MemoryTransport]:
    """A reference broker scored uninterrupted over six ticks, and a started exactly-once
    worker on a broker holding the first three."""
    reference = MemoryBroker({READINGS: 2})
    feed(reference, range(6))
    ref, _ = _eos_worker(tmp / "ref", reference)
    ref.turn()
    broker = MemoryBroker({READINGS: 2})
    feed(broker, range(3))
    w, mem = _eos_worker(tmp, broker)
    return reference, broker, w, mem


def _scores(broker: MemoryBroker) -> dict[tuple[int, int], list[float]]:
    out: dict[tuple[int, int], list[float]] = {}
    for m in broker.messages(ALERTS):
        a = orjson.loads(m.value or b"")
        out.setdefault((a["source"]["partition"], a["source"]["offset"]), []).append(a["score"])
    return out


def test_exactly_once_an_aborted_batch_shows_nothing_and_its_replay_alerts_once(
    tmp_path: Path,
) -> None:
    feed = functools.partial(_feed_eos, bad=True)
    reference, broker, w, mem = _eos_reference_and_start(tmp_path, feed)
    w.turn()  # one transaction: alerts, dead letters, state, offsets
    assert mem.committed == {P0: 6, P1: 3}
    assert len(broker.messages(ALERTS)) == 6 and len(broker.messages(DLQ)) == 3
    state = len(broker.messages("state"))
    assert state == 4  # a record per stream, a mark per partition: every batch checkpoints

    feed(broker, range(3, 6))
    mem.fail("commit")  # the broker refuses the transaction: aborted, and the worker crashes
    with pytest.raises(BrokerError):
        w.turn()
    assert ("abort", 13) in mem.events  # 6 alerts, 3 dead letters, 2 streams, 2 marks
    assert len(broker.messages(ALERTS)) == 6 and len(broker.messages(DLQ)) == 3
    assert len(broker.messages("state")) == state and mem.committed == {P0: 6, P1: 3}
    assert metric_sample(w, "anomalyd_commit_failures_total") == 1
    # Leaving after the failure writes nothing, not even from the revoke callback that
    # closing the consumer runs: the state is ahead of the committed offsets.
    w.close(clean=False)
    assert len(broker.messages("state")) == state and mem.committed == {P0: 6, P1: 3}

    w2, mem2 = _eos_worker(tmp_path, broker)  # the restart restores the committed state
    w2.turn()
    assert mem2.committed == {P0: 12, P1: 6}
    assert _scores(broker) == _scores(reference)  # each alert once, scored as if never aborted
    assert len(broker.messages(DLQ)) == 6


def test_exactly_once_a_batch_that_failed_mid_send_is_not_checkpointed_on_the_way_out(
    tmp_path: Path,
) -> None:
    # Closing the consumer runs the revoke callback; the failed batch's streams are dirty
    # with state ahead of every commit: saving it then would apply the batch twice.
    reference, broker, w, mem = _eos_reference_and_start(tmp_path, _feed_eos)
    w.turn()
    state = len(broker.messages("state"))
    _feed_eos(broker, range(3, 6))
    mem.fail("send")
    with pytest.raises(BrokerError):
        w.turn()
    w.close(clean=False)
    assert len(broker.messages("state")) == state

    w2, _ = _eos_worker(tmp_path, broker)
    w2.turn()
    assert _scores(broker) == _scores(reference)


def test_exactly_once_refuses_a_state_directory(tmp_path: Path) -> None:
    publish(tmp_path / "models", make_bundle(features=2, hidden=8, layers=1))
    s = worker_settings(tmp_path).model_copy(update={"delivery": "exactly_once"})
    w = Worker(s, MemoryTransport(MemoryBroker({READINGS: 1}), transactional=True), Metrics())
    with pytest.raises(ConfigError, match=r"exactly_once needs state\.checkpoint=kafka"):
        w.start()
