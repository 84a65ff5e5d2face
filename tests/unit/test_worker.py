"""The worker's data path over the in-memory transport: ordering, rebalances, bad input, skips.

A small real model is published to a temporary model directory and served with the
threshold forced low, so every reading alerts: alerts then stand for readings processed.
The directory checkpoint store runs for real.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from detector import worker
from detector.artifacts import publish
from detector.errors import BrokerError
from detector.kafka.memory import MemoryBroker, MemoryTransport
from detector.kafka.transport import TopicPartition
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
    alert_sources,
    metric_sample,
    produce_reading,
    started_worker,
    worker_settings,
)


def test_an_alert_is_acknowledged_before_its_offset_is_committed(tmp_path: Path) -> None:
    broker = MemoryBroker({READINGS: 2})
    for t in range(3):
        produce_reading(broker, "a", t, 0)
        produce_reading(broker, "b", t, 1)
    mem = MemoryTransport(broker)
    w = started_worker(tmp_path, mem)
    w.turn()
    kinds = [e[0] for e in mem.events]
    sends = [i for i, e in enumerate(mem.events) if e[:2] == ("send", ALERTS)]
    assert len(sends) == 6
    assert max(sends) < kinds.index("flush") < kinds.index("commit")
    assert mem.committed == {P0: 3, P1: 3}
    assert sorted(alert_sources(broker)) == [(p, o, -1) for p in (0, 1) for o in range(3)]

    # A flush the broker does not acknowledge crashes the batch: nothing is committed.
    produce_reading(broker, "a", 3, 0)
    mem.fail("flush")
    with pytest.raises(BrokerError):
        w.turn()
    assert mem.committed == {P0: 3, P1: 3}
    assert metric_sample(w, "anomalyd_kafka_errors_total", op="flush") == 1


def test_a_revoked_partition_is_checkpointed_evicted_and_committed_when_it_returns(
    tmp_path: Path,
) -> None:
    broker = MemoryBroker({READINGS: 2})
    produce_reading(broker, "a", 0, 0)
    produce_reading(broker, "b", 0, 1)
    mem = MemoryTransport(broker)
    w = started_worker(tmp_path, mem)  # a long checkpoint interval: only the first is at once
    w.turn()
    assert mem.committed == {P0: 1, P1: 1}
    for t in (1, 2):
        produce_reading(broker, "a", t, 0)
        produce_reading(broker, "b", t, 1)
    w.turn()
    assert mem.committed == {P0: 1, P1: 1}  # processed, alerted, waiting for a checkpoint
    assert len(broker.messages(ALERTS)) == 6

    mem.reassign([0])  # eager: both partitions revoked, partition 0 comes back
    w.turn()
    assert w.partitions.assigned == {P0}
    eng = w.engine
    assert eng is not None and "b" not in eng.store and "a" in eng.store  # a restored
    assert w.partitions.partition_of("b") == -1
    # The revocation wrote the checkpoint: the next owner of partition 1 skips to offset 3.
    other = MemoryTransport(broker, partitions=[1])
    w2 = started_worker(tmp_path, other)
    w2.turn()
    assert w2.partitions.assigned == {P1}
    assert metric_sample(w2, "anomalyd_readings_total") == 0  # all reflected in the restored state
    # Partition 0 resumed at its last commit: the replay is skipped, nothing alerted twice.
    assert len(broker.messages(ALERTS)) == 6
    assert metric_sample(w, "anomalyd_readings_total") == 6
    w.turn()  # idle: the checkpoint covering partition 0 is written and committed
    assert mem.committed[P0] == 3
    assert sorted(alert_sources(broker)) == [(p, o, -1) for p in (0, 1) for o in range(3)]


def test_bad_input_reaches_the_dead_letter_topic_with_its_reason(tmp_path: Path) -> None:
    broker = MemoryBroker({READINGS: 1})
    broker.produce(READINGS, b"k", b"{not json")
    batch = [{"stream_id": "a", "ts": T0, "values": [1.0, 2.0]}, {"ts": T0, "values": [1, 2]}]
    broker.produce(READINGS, None, orjson.dumps(batch))
    mem = MemoryTransport(broker)
    w = started_worker(tmp_path, mem)
    w.turn()
    dead = broker.messages(DLQ)
    assert [(m.key, m.value) for m in dead] == [
        (b"k", b"{not json"),
        (None, b'{"ts":1700000000000,"values":[1,2]}'),
    ]
    h = [dict(m.headers) for m in dead]
    assert (h[0]["reason"], h[0]["source_offset"], h[0]["index"]) == (b"not_json", b"0", b"-1")
    assert (h[1]["reason"], h[1]["source_offset"], h[1]["index"]) == (
        b"missing_stream_id",
        b"1",
        b"1",
    )
    assert alert_sources(broker) == [(0, 1, 0)]  # the good reading of the batch, at index 0
    assert metric_sample(w, "anomalyd_bad_readings_total", reason="not_json") == 1
    assert mem.committed == {TopicPartition(READINGS, 0): 2}


def test_records_the_restored_state_reflects_are_skipped(tmp_path: Path) -> None:
    broker = MemoryBroker({READINGS: 1})
    for t in range(4):
        produce_reading(broker, "a", t, 0)
    first = MemoryTransport(broker)
    w = started_worker(tmp_path, first)
    first.fail("commit")  # checkpointed, then the commit is lost: a crash would replay
    w.turn()
    assert first.committed == {}
    assert metric_sample(w, "anomalyd_kafka_errors_total", op="commit") == 1
    assert metric_sample(w, "anomalyd_commit_failures_total") == 1

    restarted = MemoryTransport(broker)  # the process died: a new one, same group
    w2 = started_worker(tmp_path, restarted)
    produce_reading(broker, "a", 4, 0)
    w2.turn()
    assert metric_sample(w2, "anomalyd_readings_total") == 1  # offsets 0-3 are in the state
    assert [o for _, o, _ in alert_sources(broker)] == [0, 1, 2, 3, 4]  # none twice
    assert restarted.committed == {TopicPartition(READINGS, 0): 5}


def test_kafka_failures_are_counted_by_operation(tmp_path: Path) -> None:
    broker = MemoryBroker({READINGS: 1})
    mem = MemoryTransport(broker)
    w = started_worker(tmp_path, mem)
    mem.fail("lag")
    w.turn()  # a lag lookup may fail: the gauge waits for the next round
    assert metric_sample(w, "anomalyd_kafka_errors_total", op="lag") == 1
    mem.fail("poll")
    w.turn()  # a poll may: the worker reconnects (below)
    assert metric_sample(w, "anomalyd_kafka_errors_total", op="poll") == 1
    assert metric_sample(w, "anomalyd_kafka_errors_total", op="send") == 0


def _after_one_reading(
    tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[MemoryBroker, MemoryTransport, Worker]:
    """A worker that reconnects at once and has scored, checkpointed and committed one
    reading (a long checkpoint interval: only the first checkpoint comes at once)."""
    monkeypatch.setattr(worker, "REJOIN_PAUSE_S", 0.0)
    broker = MemoryBroker({READINGS: 1})
    produce_reading(broker, "a", 0, 0)
    mem = MemoryTransport(broker)
    w = started_worker(tmp, mem)
    w.turn()
    return broker, mem, w


def test_a_failed_poll_reconnects_and_replays_from_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker, mem, w = _after_one_reading(tmp_path, monkeypatch)
    for t in (1, 2):
        produce_reading(broker, "a", t, 0)
    w.turn()
    assert mem.committed == {P0: 1} and len(broker.messages(ALERTS)) == 3

    mem.fail("poll")  # as kafka-python raising from inside a rejoin
    w.turn()
    eng = w.engine
    assert eng is not None and len(eng.store) == 0  # the state past the checkpoint is gone
    assert not mem.closed and w.checkpointer is not None  # connected anew
    w.turn()  # assigned again: restored at offset 1, offsets 1-2 replayed, checkpointed
    assert "a" in eng.store and mem.committed == {P0: 3}
    alerts = [orjson.loads(m.value or b"") for m in broker.messages(ALERTS)]
    assert [a["source"]["offset"] for a in alerts] == [0, 1, 2, 1, 2]
    assert [a["alert_id"] for a in alerts[3:]] == [a["alert_id"] for a in alerts[1:3]]
    assert [a["score"] for a in alerts[3:]] == [a["score"] for a in alerts[1:3]]


def test_a_stop_during_a_reconnect_exits_cleanly_without_waiting_for_a_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, mem, w = _after_one_reading(tmp_path, monkeypatch)
    w.stop()  # SIGTERM while the broker is away
    mem.fail("poll")
    w.turn()  # the pause sees the stop: no new connection
    assert mem.closed
    w.close()  # what run() does next: nothing to flush or commit on closed clients
    assert mem.committed == {P0: 1}


def test_a_poll_that_keeps_failing_crashes_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "REJOIN_PAUSE_S", 0.0)
    broker = MemoryBroker({READINGS: 1})
    mem = MemoryTransport(broker)
    w = started_worker(tmp_path, mem)
    mem.fail("poll", worker.MAX_REJOINS)
    for _ in range(worker.MAX_REJOINS):
        w.turn()  # each reconnects
    w.turn()  # a poll that works: the count starts again
    mem.fail("poll", worker.MAX_REJOINS + 1)
    for _ in range(worker.MAX_REJOINS):
        w.turn()
    with pytest.raises(BrokerError, match="poll failed"):
        w.turn()  # the supervisor's to restart, or the service manager's to see
    assert metric_sample(w, "anomalyd_kafka_errors_total", op="poll") == 2 * worker.MAX_REJOINS + 1


def test_close_commits_what_is_pending_and_leaves(tmp_path: Path) -> None:
    broker = MemoryBroker({READINGS: 1})
    produce_reading(broker, "a", 0, 0)
    mem = MemoryTransport(broker)
    w = started_worker(tmp_path, mem)
    w.turn()
    produce_reading(broker, "a", 1, 0)
    w.turn()  # waits for the checkpoint interval
    assert mem.committed == {TopicPartition(READINGS, 0): 1}
    w.close()
    assert mem.committed == {TopicPartition(READINGS, 0): 2}
    assert mem.closed and w.engine is not None and len(w.engine.store) == 0


def test_an_idle_stream_s_open_incident_is_resolved_when_its_state_expires(
    tmp_path: Path,
) -> None:
    broker = MemoryBroker({READINGS: 1, ALERTS: 1, DLQ: 1, "state": 1})
    base = worker_settings(tmp_path)
    engine = base.engine.model_copy(update={"incidents": True, "idle_ttl_s": 60.0})
    s = base.model_copy(update={"engine": engine})
    publish(tmp_path / "models", make_bundle(features=2, hidden=8, layers=1))
    now = [T0 / 1000]
    ticks = [0.0]  # the loop's monotonic clock: chores (the idle sweep) run when it advances
    w = Worker(
        s, MemoryTransport(broker), Metrics(), clock=lambda: now[0], monotonic=lambda: ticks[0]
    )
    assert w.start()
    produce_reading(broker, "pump-1", 0, 0)
    produce_reading(broker, "pump-1", 1, 0)
    w.turn()
    assert [orjson.loads(m.value or b"")["event"] for m in broker.messages(ALERTS)] == ["open"]
    now[0] += 120  # two minutes without a reading from pump-1
    ticks[0] += 60
    w.turn()
    events = [orjson.loads(m.value or b"") for m in broker.messages(ALERTS)]
    assert [e["event"] for e in events] == ["open", "resolved"]
    end = events[1]
    assert end["reason"] == "expired" and end["incident_id"] == events[0]["incident_id"]
    assert end["readings"] == 2 and end["source"] is None
    assert metric_sample(w, "anomalyd_incidents_resolved_total", rule="error") == 1
    ticks[0] += 60
    w.turn()  # nothing more to close
    assert len(broker.messages(ALERTS)) == 2


def test_an_expired_stream_stays_gone_after_a_restart(tmp_path: Path) -> None:
    # The directory store rewrote only the files of partitions with new offsets: with no
    # reading since, an expired stream stayed in its file, came back at the next start
    # with its open incident, and expired again: a second `resolved` for one incident.
    broker = MemoryBroker({READINGS: 2, ALERTS: 1, DLQ: 1, "state": 1})
    base = worker_settings(tmp_path)
    engine = base.engine.model_copy(update={"incidents": True, "idle_ttl_s": 60.0})
    s = base.model_copy(update={"engine": engine})
    publish(tmp_path / "models", make_bundle(features=2, hidden=8, layers=1))
    now, ticks = [T0 / 1000], [0.0]

    def start() -> Worker:
        w = Worker(
            s, MemoryTransport(broker), Metrics(), clock=lambda: now[0], monotonic=lambda: ticks[0]
        )
        assert w.start()
        return w

    w = start()
    produce_reading(broker, "pump-1", 0, 0)
    produce_reading(broker, "pump-2", 0, 1)
    w.turn()
    now[0] += 50
    produce_reading(broker, "pump-2", 50, 1)  # pump-2 goes on, on the other partition
    ticks[0] += 60
    w.turn()
    now[0] += 70  # pump-1 silent for two minutes: expired, its incident resolved
    produce_reading(broker, "pump-2", 120, 1)
    ticks[0] += 60
    w.turn()
    assert assert_resolved_once(broker) == {"pump-1"}
    w.close()
    again = start()
    produce_reading(broker, "pump-2", 121, 1)
    ticks[0] += 60
    again.turn()
    assert assert_resolved_once(broker) == {"pump-1"}
    assert again.engine is not None and "pump-1" not in again.engine.store
    again.close()


def assert_resolved_once(broker: MemoryBroker) -> set[str]:
    """The streams whose incidents resolved, each incident resolved once."""
    ends = [orjson.loads(m.value or b"") for m in broker.messages(ALERTS)]
    ids = [e["incident_id"] for e in ends if e["event"] == "resolved"]
    assert len(ids) == len(set(ids)), ids
    return {e["stream_id"] for e in ends if e["event"] == "resolved"}


def test_a_clean_stop_gives_its_partitions_up_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = MemoryBroker({READINGS: 2})
    produce_reading(broker, "a", 0, 0)
    mem = MemoryTransport(broker)
    w = started_worker(tmp_path, mem)
    w.turn()
    with caplog.at_level("INFO", logger="anomalyd"):
        w.close()  # gives the partitions up, then the consumer's close revokes them again
    revoked = [r.getMessage() for r in caplog.records if "partitions revoked" in r.message]
    assert revoked == ["partitions revoked: [0, 1]"]
    assert metric_sample(w, "anomalyd_rebalances_total", event="revoked") == 1
    assert mem.closed and not w.partitions.assigned
