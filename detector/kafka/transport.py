"""The worker's one seam to Kafka: a consumer and a producer behind a small interface.

:class:`Transport` is what the worker relies on, nothing more: records polled per
partition in offset order, rebalance callbacks run *inside* ``poll`` between batches,
commits of the next offset to read, sends that are acknowledged only by ``flush``.
:class:`~detector.kafka.kafka_transport.KafkaTransport` implements it over kafka-python,
:class:`~detector.kafka.memory.MemoryTransport` in memory for tests.

Every Kafka failure a transport reports is a :class:`~detector.errors.BrokerError`; the
worker decides which ones it survives (a failed commit, a lag lookup) and which crash it
(a send or flush the broker did not acknowledge).

A *transactional* transport (``delivery=exactly_once``) opens a transaction at the first
send after a commit; ``commit`` then commits it together with the offsets, so readers
that read committed data only see its sends when the offsets are stored, never without
them; a failed ``commit`` has aborted the transaction; ``close`` aborts an open one.
Inside a transaction ``flush`` may return at once: the commit flushes, and a send that
failed fails it.

This module imports no Kafka client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import NamedTuple, Protocol

from detector.errors import BrokerError

__all__ = [
    "CountingTransport",
    "Headers",
    "Offsets",
    "RebalanceCallback",
    "Record",
    "TopicPartition",
    "Transport",
]


class TopicPartition(NamedTuple):
    """A partition of a topic (equal to kafka-python's namedtuple of the same fields)."""

    topic: str
    partition: int


class Record(NamedTuple):
    """A consumed message, decoupled from any client's record type."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


#: Next offset to read per partition: what a commit stores, what a checkpoint mark holds.
Offsets = dict[TopicPartition, int]
Headers = Sequence[tuple[str, bytes]]
RebalanceCallback = Callable[[list[TopicPartition]], None]


class Transport(Protocol):
    """A group consumer of one topic plus a producer, as the worker uses them."""

    def subscribe(
        self, topic: str, on_assigned: RebalanceCallback, on_revoked: RebalanceCallback
    ) -> None:
        """Join the group for ``topic``; the callbacks run inside later ``poll`` calls.

        A closed transport may subscribe again: it connects anew."""

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        """Up to ``max_records`` records, in offset order per partition (rebalances first)."""
        ...

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Store the next offset to read per partition; raises BrokerError if refused.

        Transactional: commit the open transaction (if any) with ``offsets`` in it; empty
        ``offsets`` commit the sends alone; a BrokerError means it was aborted.
        """

    def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = ()
    ) -> None:
        """Queue a message (``value=None``: a tombstone); acknowledged by ``flush``."""

    def flush(self) -> None:
        """Block until every send so far is acknowledged; raises BrokerError otherwise."""

    def lag(self, tp: TopicPartition) -> int | None:
        """Records between the consumer's position and the high watermark, if known."""
        ...

    def close(self) -> None:
        """Leave the group without committing (aborting an open transaction), release."""


class CountingTransport:
    """A transport that reports the operation of every failed call, then re-raises.

    ``count`` gets ``"poll"``, ``"commit"``, ``"send"``, ``"flush"``, ``"lag"`` or
    ``"subscribe"``; what survives a failure is the caller's decision.
    """

    def __init__(self, inner: Transport, count: Callable[[str], None]) -> None:
        self.inner = inner
        self._count = count

    @contextmanager
    def _counted(self, op: str) -> Iterator[None]:
        try:
            yield
        except BrokerError:
            self._count(op)
            raise

    def subscribe(
        self, topic: str, on_assigned: RebalanceCallback, on_revoked: RebalanceCallback
    ) -> None:
        with self._counted("subscribe"):
            self.inner.subscribe(topic, on_assigned, on_revoked)

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        with self._counted("poll"):
            return self.inner.poll(timeout_ms, max_records)

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        with self._counted("commit"):
            self.inner.commit(offsets)

    def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = ()
    ) -> None:
        with self._counted("send"):
            self.inner.send(topic, key, value, headers)

    def flush(self) -> None:
        with self._counted("flush"):
            self.inner.flush()

    def lag(self, tp: TopicPartition) -> int | None:
        with self._counted("lag"):
            return self.inner.lag(tp)

    def close(self) -> None:
        self.inner.close()
