"""The :class:`~detector.kafka.transport.Transport` over a real cluster, with kafka-python.

Built from settings and connected on :meth:`KafkaTransport.subscribe`: the output topics
are created if missing, then the producer (idempotent, acks from all in-sync replicas,
waited for in ``flush``) and a manual-commit group consumer are connected, retrying until
a broker answers. kafka-python errors leave this module as :class:`BrokerError`.

With ``delivery=exactly_once`` the producer is transactional and the consumer reads
``read_committed``. The first send after a commit opens a transaction; :meth:`commit`
adds the consumed offsets to it and commits it, so a batch's alerts, dead letters, state
records and offsets become visible together or not at all. A transaction that fails is
aborted and the failure raised: the worker's in-memory state has moved past what is
durable, so only a restart (restore from the last committed transaction) is correct.

The transactional id is ``anomalyd.<group>.<client id>.<host name>``: stable across
restarts of one instance (a pod, a container), so a restarted worker fences its killed
predecessor and aborts the transaction it left open at once rather than after the
transaction timeout. Two workers on one host need distinct ``kafka.client_id``.
Zombies of *other* instances are fenced by the group generation sent with the offsets
(KIP-447), so the id need not follow the partition assignment. An instance that never
comes back leaves its transaction to the broker, which aborts it after 30 s: below the
default session timeout, so the restore that waits for it (stores.py) ends before its
rebalance callback would cost the worker its group membership.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import Any

from detector.config import Settings
from detector.errors import BrokerError
from detector.kafka import clients
from detector.kafka.clients import KafkaError
from detector.kafka.transport import Headers, RebalanceCallback, Record, TopicPartition

__all__ = ["KafkaTransport", "transactional_id"]

log = logging.getLogger("anomalyd.kafka")

#: The broker aborts a transaction open longer: below the default session timeout (45 s).
TRANSACTION_TIMEOUT_MS = 30_000


class KafkaTransport:
    """The consumer and producer of ``anomalyd run``, behind the Transport interface."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self._consumer: Any = None  # kafka.KafkaConsumer, untyped
        self._producer: clients.Producer | None = None
        self._eos = settings.delivery == "exactly_once"
        self._in_transaction = False

    def subscribe(
        self, topic: str, on_assigned: RebalanceCallback, on_revoked: RebalanceCallback
    ) -> None:
        s, c = self.s, self.s.consumer
        topics: dict[str, tuple[int, dict[str, str]]] = {
            s.topics.alerts: (s.topics.partitions, {}),
            s.topics.dlq: (s.topics.partitions, {}),
        }
        if s.state.checkpoint == "kafka":
            topics[s.topics.state] = (1, {"cleanup.policy": "compact"})
        clients.ensure_topics(s.kafka, topics, attempts=None, settings=s.topics)
        # Before joining the group: a restored partition must not see a transaction this
        # instance left open when it was killed.
        if self._eos:
            tid = transactional_id(s)
            self._producer = clients.connect_producer(
                s.kafka, transactional_id=tid, transaction_timeout_ms=TRANSACTION_TIMEOUT_MS
            )
        else:
            self._producer = clients.connect_producer(s.kafka)
        self._consumer = clients.connect_consumer(
            s.kafka,
            group_id=c.group_id,
            max_poll_records=c.max_poll_records,
            max_poll_interval_ms=c.max_poll_interval_ms,
            session_timeout_ms=c.session_timeout_ms,
            auto_offset_reset=c.auto_offset_reset,
            # A topic (or partitions) created while the group forms is otherwise only seen
            # at the next metadata refresh, 5 minutes by default: until then nothing is
            # assigned and the worker is not ready.
            metadata_max_age_ms=30_000,
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024,
            isolation_level="read_committed" if self._eos else "read_uncommitted",
        )
        # The topic's partitions in the client's metadata before the group forms: a leader
        # that assigns from metadata without them hands out nothing (seen once in CI: an
        # empty assignment that then stood for minutes).
        known = self._consumer.partitions_for_topic(topic) or ()
        log.info("topic %s has %d partitions", topic, len(known))
        listener = clients.RebalanceListener(
            lambda tps: on_revoked(_ours(tps)), lambda tps: on_assigned(_ours(tps))
        )
        self._consumer.subscribe([topic], listener=listener)

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        try:
            got = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            raise BrokerError(f"polling {self.s.topics.readings!r} failed: {exc}") from exc
        _resume_stalled_join(self._consumer)
        return [
            Record(r.topic, r.partition, r.offset, r.key, r.value)
            for recs in got.values()
            for r in recs
        ]

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        theirs = {
            clients.TopicPartition(tp.topic, tp.partition): clients.OffsetAndMetadata(o, "", -1)
            for tp, o in offsets.items()
        }
        if self._eos:
            self._commit_transaction(theirs)
            return
        try:
            self._consumer.commit(offsets=theirs)
        except KafkaError as exc:
            raise BrokerError(f"offset commit failed: {exc}") from exc

    def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = ()
    ) -> None:
        assert self._producer is not None, "subscribe() connects the producer"
        try:
            if self._eos and not self._in_transaction:
                self._producer.begin()
                self._in_transaction = True
            self._producer.send(topic, key, value, headers)  # type: ignore[arg-type]  # tombstone
        except KafkaError as exc:
            raise BrokerError(f"sending to {topic!r} failed: {exc}") from exc

    def flush(self) -> None:
        assert self._producer is not None, "subscribe() connects the producer"
        if self._in_transaction:  # nothing is visible before the commit, which flushes
            return
        try:
            self._producer.flush()  # raises BrokerError for a send not acknowledged
        except KafkaError as exc:
            raise BrokerError(f"flushing the producer failed: {exc}") from exc

    def lag(self, tp: TopicPartition) -> int | None:
        theirs = clients.TopicPartition(tp.topic, tp.partition)
        try:
            hw = self._consumer.highwater(theirs)
            pos = self._consumer.position(theirs, timeout_ms=1000)
        except KafkaError as exc:
            raise BrokerError(f"lag of {tp.topic}/{tp.partition} unknown: {exc}") from exc
        return None if hw is None or pos is None else max(0, int(hw) - int(pos))

    def close(self) -> None:
        try:
            if self._in_transaction:  # a batch that failed: none of it becomes visible
                self._abort()
            if self._consumer is not None:
                self._consumer.close(autocommit=False)
        finally:
            self._consumer = None
            if self._producer is not None:
                self._producer.close()
            self._producer = None  # subscribe() connects anew

    def _commit_transaction(self, offsets: dict[Any, Any]) -> None:
        assert self._producer is not None, "subscribe() connects the producer"
        if not self._in_transaction and not offsets:
            return  # nothing sent, nothing consumed
        try:
            if not self._in_transaction:
                self._producer.begin()
                self._in_transaction = True
            self._producer.commit(offsets, self._consumer.group_metadata())
            self._in_transaction = False
        except (KafkaError, BrokerError) as exc:
            self._abort()
            raise BrokerError(
                f"transaction aborted, restarting from the last committed one: {exc}"
                + _fenced_hint(exc, self._producer.transactional_id)
            ) from exc

    def _abort(self) -> None:
        """Abort the open transaction, best effort: a fenced producer cannot, and then the
        broker aborts it for the instance that fenced it (or at the transaction timeout)."""
        self._in_transaction = False
        if self._producer is None:
            return
        try:
            self._producer.abort()
        except (KafkaError, BrokerError) as exc:  # unanswered: the caller's error is the news
            log.warning("aborting the transaction failed (the broker will): %s", exc)


def _resume_stalled_join(consumer: Any) -> None:
    """Work around a kafka-python 3.0 race that leaves the worker with no partitions.

    A rejoin that a metadata change triggered (after every first join, whose assignment
    predates the topic's metadata) stops counting as needed once the leader has assigned,
    so a join still in flight when ``poll`` times out is never completed: no assignment,
    no heartbeats, the group empties. Asking for the rejoin again makes the next ``poll``
    finish it. Seen with short poll timeouts and slow first restores (exactly once).
    """
    co = getattr(consumer, "_coordinator", None)
    if co is not None and getattr(co, "_join_task", None) is not None and not co.need_rejoin():
        log.info("resuming a consumer group join that kafka-python left unfinished")
        co.request_rejoin()


def transactional_id(s: Settings) -> str:
    """This instance's transactional id: the same after a restart of the same instance."""
    return f"anomalyd.{s.consumer.group_id}.{s.kafka.client_id}.{socket.gethostname()}"


def _fenced_hint(exc: BaseException, tid: str | None) -> str:
    if type(exc).__name__ not in ("ProducerFencedError", "InvalidProducerEpochError"):
        return ""
    return (
        f"; another producer took over transactional id {tid!r}: a newer process of this "
        "instance, or a second worker on this host with the same kafka.client_id (give "
        "each its own ANOMALYD_KAFKA__CLIENT_ID)"
    )


def _ours(tps: list[Any]) -> list[TopicPartition]:
    return [TopicPartition(tp.topic, tp.partition) for tp in tps]
