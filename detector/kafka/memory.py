"""An in-memory :class:`~detector.kafka.transport.Transport` that behaves like Kafka for tests.

What the worker relies on holds here as on a broker: records of a partition come in
offset order from the consumer's position; a group member's position starts at the
group's committed offset (or the beginning) when a partition is assigned; rebalances are
eager (every partition revoked, then the new set assigned) and their callbacks run inside
``poll``; a commit of a partition the member does not own is refused; a send is visible
to readers only once ``flush`` acknowledged it. Every call is appended to ``events`` so a
test can check the order of sends, flushes and commits, and :meth:`MemoryTransport.fail`
makes the next calls of an operation raise :class:`BrokerError`, as a broker would.

``transactional=True`` behaves as a transactional producer seen by ``read_committed``
readers: acknowledged sends stay invisible until ``commit``, which publishes them and
stores the offsets at once; a failed commit, ``close`` or dropping the transport (a
killed process) discards them, as an abort would.

Examples
--------
>>> broker = MemoryBroker({"readings": 2})
>>> _ = broker.produce("readings", b"pump-1", b"{}", partition=1)
>>> t = MemoryTransport(broker)
>>> t.subscribe("readings", on_assigned=print, on_revoked=print)
>>> [r.offset for r in t.poll(timeout_ms=0, max_records=10)]
[TopicPartition(topic='readings', partition=0), TopicPartition(topic='readings', partition=1)]
[0]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from detector.errors import BrokerError
from detector.kafka.transport import (
    Headers,
    Offsets,
    RebalanceCallback,
    Record,
    TopicPartition,
)

__all__ = ["MemoryBroker", "MemoryTransport", "Message"]

Event = tuple[object, ...]


class Message(NamedTuple):
    """A message on a topic, with the headers it was sent with."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


class MemoryBroker:
    """Topics of partitions, and each group's committed offsets."""

    def __init__(self, topics: Mapping[str, int] | None = None) -> None:
        self.logs: dict[str, list[list[Message]]] = {}
        self.committed: dict[str, Offsets] = {}
        for name, n in (topics or {}).items():
            self.create_topic(name, n)

    def create_topic(self, name: str, partitions: int = 1) -> None:
        self.logs.setdefault(name, [[] for _ in range(partitions)])

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: Headers = (),
    ) -> Message:
        """Append a message (created topics have 1 partition); keyed ones by key hash."""
        self.create_topic(topic)
        parts = self.logs[topic]
        if partition is None:
            partition = sum(key) % len(parts) if key else 0
        log = parts[partition]
        m = Message(topic, partition, len(log), key, value, tuple(headers))
        log.append(m)
        return m

    def messages(self, topic: str) -> list[Message]:
        """Every message of ``topic``, by partition then offset."""
        return [m for log in self.logs.get(topic, []) for m in log]

    def end(self, tp: TopicPartition) -> int:
        return len(self.logs[tp.topic][tp.partition])


class MemoryTransport:
    """One member of a consumer group on a :class:`MemoryBroker`, plus a producer.

    ``partitions``: what the group hands this member on subscribing (default: all);
    :meth:`reassign` changes it at the next ``poll``, as a rebalance would.
    """

    def __init__(
        self,
        broker: MemoryBroker,
        group: str = "anomalyd",
        partitions: Iterable[int] | None = None,
        events: list[Event] | None = None,
        transactional: bool = False,
    ) -> None:
        self.broker = broker
        self.transactional = transactional
        self.group = group
        self.events: list[Event] = [] if events is None else events
        self.assigned: set[TopicPartition] = set()
        self.positions: Offsets = {}
        self.closed = False
        self._topic: str | None = None
        self._next: list[int] | None = None if partitions is None else list(partitions)
        self._rebalance_due = False
        self._callbacks: tuple[RebalanceCallback, RebalanceCallback] | None = None
        self._unacked: list[tuple[str, bytes | None, bytes | None, Headers]] = []
        self._txn: list[tuple[str, bytes | None, bytes | None, Headers]] = []  # acked, hidden
        self._failing: Counter[str] = Counter()

    # -- test controls ----------------------------------------------------------------

    def fail(self, op: str, times: int = 1) -> None:
        """The next ``times`` calls of ``op`` (poll, commit, send, flush, lag) raise."""
        self._failing[op] += times

    def reassign(self, partitions: Iterable[int]) -> None:
        """A rebalance handing this member ``partitions``, run inside the next ``poll``."""
        self._next, self._rebalance_due = list(partitions), True

    @property
    def committed(self) -> Offsets:
        return self.broker.committed.setdefault(self.group, {})

    # -- the transport ----------------------------------------------------------------

    def subscribe(
        self, topic: str, on_assigned: RebalanceCallback, on_revoked: RebalanceCallback
    ) -> None:
        self.broker.create_topic(topic)
        self._topic, self._callbacks = topic, (on_assigned, on_revoked)
        self._rebalance_due, self.closed = True, False  # a closed one joins anew

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        self._check("poll")
        if self._rebalance_due:
            self._rebalance()
        out: list[Record] = []
        for tp in sorted(self.assigned):
            log = self.broker.logs[tp.topic][tp.partition]
            pos = self.positions[tp]
            took = log[pos : pos + max_records - len(out)]
            out += [Record(m.topic, m.partition, m.offset, m.key, m.value) for m in took]
            self.positions[tp] = pos + len(took)
        return out

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if self.transactional and not offsets and not self._txn and not self._unacked:
            return  # no transaction open
        try:
            self._check("commit")
            stray = sorted(set(offsets) - self.assigned)
            if stray:  # as Kafka's CommitFailedError after a rebalance
                raise BrokerError(f"commit refused: {stray} are not assigned to this member")
            if self.transactional:
                self.flush()  # as commit_transaction does
        except BrokerError:
            if self.transactional:
                self._abort()
            raise
        if self.transactional:
            done, self._txn = self._txn, []
            for topic, key, value, headers in done:
                self.broker.produce(topic, key, value, headers=headers)
        self.committed.update(offsets)
        self.events.append(("commit", dict(offsets)))

    def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = ()
    ) -> None:
        self._check("send")
        self._unacked.append((topic, key, value, headers))
        self.events.append(("send", topic, key))

    def flush(self) -> None:
        self._check("flush")
        sent, self._unacked = self._unacked, []
        if self.transactional:
            self._txn += sent
        else:
            for topic, key, value, headers in sent:
                self.broker.produce(topic, key, value, headers=headers)
        self.events.append(("flush", len(sent)))

    def lag(self, tp: TopicPartition) -> int | None:
        self._check("lag")
        pos = self.positions.get(tp)
        return None if pos is None else self.broker.end(tp) - pos

    def close(self) -> None:
        if self.transactional and (self._txn or self._unacked):
            self._abort()
        if self._callbacks is not None and self.assigned:  # as kafka-python's close does
            gone, self.assigned = sorted(self.assigned), set()
            self._callbacks[1](gone)
        self.closed = True
        self.events.append(("close",))

    # -- inside -----------------------------------------------------------------------

    def _check(self, op: str) -> None:
        if self.closed:
            raise BrokerError(f"{op} on a closed transport")
        if self._failing[op] > 0:
            self._failing[op] -= 1
            raise BrokerError(f"{op} failed (injected)")

    def _abort(self) -> None:
        self.events.append(("abort", len(self._txn) + len(self._unacked)))
        self._txn, self._unacked = [], []

    def _rebalance(self) -> None:
        assert self._topic is not None and self._callbacks is not None, "subscribe() first"
        on_assigned, on_revoked = self._callbacks
        self._rebalance_due = False
        if self.assigned:  # eager: everything goes, then the new set comes
            gone = sorted(self.assigned)
            self.assigned, self.positions = set(), {}
            self.events.append(("revoked", gone))
            on_revoked(gone)
        n = len(self.broker.logs[self._topic])
        parts = range(n) if self._next is None else self._next
        new = [TopicPartition(self._topic, p) for p in parts]
        self.assigned = set(new)
        self.positions = {tp: self.committed.get(tp, 0) for tp in new}
        self.events.append(("assigned", new))
        on_assigned(new)
