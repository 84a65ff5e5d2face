"""Producer's transactional steps against a coordinator that never answers or refuses:
a BrokerError naming the step and the wait, never a hang; a refusal keeps its reason.

A real coordinator cannot be made to hang deterministically in a unit test, so kafka-python's
own TransactionManager runs here behind a stand-in for its sender thread and the broker.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from kafka.errors import ProducerFencedError
from kafka.future import Future
from kafka.producer.transaction_manager import (
    ProducerIdAndEpoch,
    TransactionManager,
    TransactionState,
)

from detector.config import Settings
from detector.errors import BrokerError
from detector.kafka import clients, kafka_transport
from detector.kafka.clients import OffsetAndMetadata, Producer, TopicPartition
from detector.kafka.transport import TopicPartition as OurPartition

WAIT_S = 0.2
SILENT = None  # the coordinator's answer: never


class Coordinator:
    """Stands in for kafka-python's sender thread and the broker it talks to."""

    def __init__(self, tm: TransactionManager, error_code: int | None) -> None:
        self.tm, self.error_code = tm, error_code

    def wakeup(self) -> None:
        if self.error_code is SILENT:
            return  # unreachable: the request waits in the queue for ever
        while self.tm._pending_requests:
            _, _, handler = heapq.heappop(self.tm._pending_requests)
            handler.handle_response(SimpleNamespace(error_code=self.error_code))


class FakeKafkaProducer:
    """The parts of KafkaProducer that Producer uses, around a real TransactionManager."""

    def __init__(self, error_code: int | None) -> None:
        self.config = {"transactional_id": "anomalyd.test"}
        self._transaction_manager = TransactionManager(
            transactional_id="anomalyd.test", transaction_timeout_ms=30_000, api_version=(2, 6)
        )
        tm = self._transaction_manager
        tm._transition_to(TransactionState.INITIALIZING)  # as init_transactions leaves it
        tm.set_producer_id_and_epoch(ProducerIdAndEpoch(1, 0))
        tm._transition_to(TransactionState.READY)
        self._sender = Coordinator(tm, error_code)

    def begin_transaction(self) -> None:
        self._transaction_manager.begin_transaction()

    def send(self, topic: str, **kw: Any) -> Future:
        return Future().success(None)  # acknowledged at once: only the coordinator is slow

    def flush(self, timeout: float) -> None:
        pass

    def close(self, timeout: float) -> None:
        pass


def connected(error_code: int | None) -> Producer:
    fake: Any = FakeKafkaProducer(error_code)
    return Producer(fake, transaction_wait_s=WAIT_S)


def producer(error_code: int | None) -> Producer:
    """A producer in a transaction with one message sent."""
    p = connected(error_code)
    p.begin()
    p.send("anomaly-alerts", b"s1", b"{}")
    return p


OFFSETS = {TopicPartition("sensor-readings", 0): OffsetAndMetadata(42, "", -1)}
STEPS: dict[str, Callable[[Producer], None]] = {
    "sending the consumed offsets to the transaction": lambda p: p.commit(OFFSETS, "anomalyd"),
    "committing the transaction": lambda p: p.commit({}, "anomalyd"),
    "aborting the transaction": lambda p: p.abort(),
}


@pytest.mark.parametrize("step", STEPS)
def test_a_step_the_coordinator_never_answers_raises_within_the_wait(step: str) -> None:
    p = producer(SILENT)
    t0 = time.monotonic()
    with pytest.raises(BrokerError) as err:
        STEPS[step](p)
    assert time.monotonic() - t0 < 2.0
    assert str(err.value).startswith(f"{step}: no answer from the transaction coordinator")
    assert f"within {WAIT_S:g}s" in str(err.value)


def test_a_commit_waits_once_for_its_flush_offsets_and_commit_together() -> None:
    # A flush that took 90 % of the wait leaves the unanswered offsets step the rest, not
    # a wait of its own: a commit fails within transaction_wait_s, not three times it.
    now = [0.0]
    fake: Any = FakeKafkaProducer(SILENT)
    fake.flush = lambda timeout: now.__setitem__(0, now[0] + 0.9 * timeout)
    p = Producer(fake, transaction_wait_s=1.0, clock=lambda: now[0])
    p.begin()
    p.send("anomaly-alerts", b"s1", b"{}")
    t0 = time.monotonic()
    with pytest.raises(BrokerError, match=r"sending the consumed offsets.* within 1s"):
        p.commit(OFFSETS, "anomalyd")
    assert time.monotonic() - t0 < 0.9  # it waited the 0.1 s left (a wait of its own: 1 s)


def test_a_commit_the_coordinator_refuses_raises_kafka_pythons_error() -> None:
    # Its type, not a BrokerError: the transport tells a fenced producer by it.
    with pytest.raises(ProducerFencedError):
        producer(ProducerFencedError.errno).commit({}, "anomalyd")


def test_a_commit_the_coordinator_accepts_returns() -> None:
    producer(0).commit({}, "anomalyd")


def test_the_wait_is_the_kafka_transaction_wait_s_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    # An operator whose coordinator fails over slowly sets ANOMALYD_KAFKA__TRANSACTION_WAIT_S.
    monkeypatch.setattr(clients, "KafkaProducer", lambda **kw: FakeKafkaProducer(SILENT))
    k = Settings(kafka={"transaction_wait_s": 1}).kafka
    p = clients.connect_producer(k, attempts=1)
    p.begin()
    with pytest.raises(BrokerError, match=r"committing the transaction: .* within 1s"):
        p.commit({}, "anomalyd")


class FakeConsumer:
    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def subscribe(self, topics: list[str], listener: Any) -> None:
        pass

    def group_metadata(self) -> str:
        return "anomalyd"

    def close(self, autocommit: bool) -> None:
        pass


@pytest.fixture
def transport(monkeypatch: pytest.MonkeyPatch) -> Callable[[int | None], Any]:
    """An exactly-once KafkaTransport, subscribed, over a coordinator that answers so."""

    def make(error_code: int | None) -> kafka_transport.KafkaTransport:
        monkeypatch.setattr(clients, "ensure_topics", lambda *a, **kw: None)
        monkeypatch.setattr(clients, "connect_consumer", lambda *a, **kw: FakeConsumer())
        monkeypatch.setattr(clients, "connect_producer", lambda *a, **kw: connected(error_code))
        t = kafka_transport.KafkaTransport(Settings(delivery="exactly_once"))
        t.subscribe("sensor-readings", lambda tps: None, lambda tps: None)
        t.send("anomaly-alerts", b"s1", b"{}")
        return t

    return make


def test_the_worker_gets_a_broker_error_when_the_coordinator_stops_answering(
    transport: Callable[[int | None], Any],
) -> None:
    t = transport(SILENT)
    t0 = time.monotonic()
    with pytest.raises(BrokerError, match=r"committing the transaction: no answer .* 0\.2s"):
        t.commit({})
    assert time.monotonic() - t0 < 2.0


def test_the_worker_gets_the_brokers_reason_when_it_refuses_the_commit(
    transport: Callable[[int | None], Any],
) -> None:
    with pytest.raises(BrokerError, match=r"ProducerFencedError.*another producer took over"):
        transport(ProducerFencedError.errno).commit({OurPartition("sensor-readings", 0): 42})


def test_an_unanswered_offsets_step_reports_itself_not_the_abort_after_it(
    transport: Callable[[int | None], Any],
) -> None:
    # The abort that follows waits for the same silent coordinator; the worker must learn
    # what failed first, once both waits are over.
    t = transport(SILENT)
    t0 = time.monotonic()
    with pytest.raises(BrokerError, match=r"sending the consumed offsets .* no answer"):
        t.commit({OurPartition("sensor-readings", 0): 42})
    assert time.monotonic() - t0 < 3.0
