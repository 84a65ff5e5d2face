"""The :class:`~detector.kafka.transport.Transport` over a real cluster, with kafka-python.

Built from settings and connected on :meth:`KafkaTransport.subscribe`: the output topics
are created if missing, then the producer (acks from all in-sync replicas, waited for in
``flush``) and a manual-commit group consumer are connected, retrying until a broker
answers. kafka-python errors leave this module as :class:`BrokerError`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from detector.config import Settings
from detector.errors import BrokerError
from detector.kafka import clients
from detector.kafka.clients import KafkaError
from detector.kafka.transport import Headers, RebalanceCallback, Record, TopicPartition

__all__ = ["KafkaTransport"]

log = logging.getLogger("anomalyd.kafka")


class KafkaTransport:
    """The consumer and producer of ``anomalyd run``, behind the Transport interface."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self._consumer: Any = None  # kafka.KafkaConsumer, untyped
        self._producer: clients.Producer | None = None

    def subscribe(
        self, topic: str, on_assigned: RebalanceCallback, on_revoked: RebalanceCallback
    ) -> None:
        s, c = self.s, self.s.consumer
        topics: dict[str, tuple[int, dict[str, str]]] = {
            s.topics.alerts: (1, {}),
            s.topics.dlq: (1, {}),
        }
        if s.state.checkpoint == "kafka":
            topics[s.topics.state] = (1, {"cleanup.policy": "compact"})
        clients.ensure_topics(s.kafka, topics, attempts=None)
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
        try:
            self._consumer.commit(offsets=theirs)
        except KafkaError as exc:
            raise BrokerError(f"offset commit failed: {exc}") from exc

    def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = ()
    ) -> None:
        assert self._producer is not None, "subscribe() connects the producer"
        try:
            self._producer.send(topic, key, value, headers)  # type: ignore[arg-type]  # tombstone
        except KafkaError as exc:
            raise BrokerError(f"sending to {topic!r} failed: {exc}") from exc

    def flush(self) -> None:
        assert self._producer is not None, "subscribe() connects the producer"
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
            if self._consumer is not None:
                self._consumer.close(autocommit=False)
        finally:
            if self._producer is not None:
                self._producer.close()


def _ours(tps: list[Any]) -> list[TopicPartition]:
    return [TopicPartition(tp.topic, tp.partition) for tp in tps]
