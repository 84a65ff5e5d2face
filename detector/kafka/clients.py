"""Kafka clients for the worker and the demo (this package alone imports kafka-python).

``connect_consumer`` / ``connect_producer`` build clients from :class:`KafkaSettings`
(SASL/SSL included; secrets are passed to the client, never logged) and retry with
exponential backoff while no broker answers, logging each attempt. :class:`Producer`
sends and then *waits for every acknowledgement* in :meth:`Producer.flush`, raising
:class:`BrokerError` if any send failed — the worker commits offsets only after that.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from detector.config import KafkaSettings
from detector.errors import BrokerError

__all__ = [
    "KafkaError",
    "OffsetAndMetadata",
    "Producer",
    "RebalanceListener",
    "TopicPartition",
    "client_options",
    "connect_consumer",
    "connect_producer",
    "ensure_topics",
    "with_retry",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


def client_options(k: KafkaSettings) -> dict[str, Any]:
    """kafka-python options for the connection and security settings, secrets included.

    The one place they are built: the worker's clients and the trainer's topic reader
    both start from here. SASL is on when the security protocol says so (SASL_*), TLS
    files are passed for SSL and SASL_SSL.
    """
    opts: dict[str, Any] = {
        "bootstrap_servers": k.bootstrap_servers.split(","),
        "client_id": k.client_id,
        "security_protocol": k.security_protocol,
        "request_timeout_ms": k.request_timeout_ms,
    }
    if k.security_protocol.startswith("SASL"):
        opts["sasl_mechanism"] = k.sasl_mechanism
        opts["sasl_plain_username"] = k.sasl_username
        opts["sasl_plain_password"] = k.secret("sasl_password")
    if k.security_protocol in ("SSL", "SASL_SSL"):
        for ours, theirs in (
            ("ssl_cafile", "ssl_cafile"),
            ("ssl_certfile", "ssl_certfile"),
            ("ssl_keyfile", "ssl_keyfile"),
        ):
            p = getattr(k, ours)
            if p is not None:
                opts[theirs] = str(p)
        pw = k.secret("ssl_password")
        if pw:
            opts["ssl_password"] = pw
    return opts


def with_retry(
    what: str,
    fn: Callable[[], T],
    *,
    attempts: int | None = None,
    max_backoff_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` until it stops raising KafkaError, backing off exponentially.

    ``attempts=None`` retries forever (a daemon waits for its broker); the last error is
    raised as BrokerError otherwise.
    """
    delay, n = 0.5, 0
    while True:
        n += 1
        try:
            return fn()
        except KafkaError as exc:
            if attempts is not None and n >= attempts:
                raise BrokerError(f"{what} failed after {n} attempts: {exc}") from exc
            log.warning("%s failed (attempt %d): %s; retrying in %.1fs", what, n, exc, delay)
            sleep(delay)
            delay = min(delay * 2, max_backoff_s)


class RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Adapts kafka-python's listener to two plain callbacks."""

    def __init__(
        self,
        on_revoked: Callable[[list[TopicPartition]], None],
        on_assigned: Callable[[list[TopicPartition]], None],
    ) -> None:
        self._revoked, self._assigned = on_revoked, on_assigned

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._revoked(list(revoked))

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._assigned(list(assigned))


def connect_consumer(k: KafkaSettings, attempts: int | None = None, **kw: Any) -> KafkaConsumer:
    """A consumer with manual commits, retried until a broker answers."""
    opts = client_options(k) | {"enable_auto_commit": False} | kw
    return with_retry(
        f"connecting consumer to {k.bootstrap_servers}",
        lambda: KafkaConsumer(**opts),
        attempts=attempts,
    )


class Producer:
    """A producer whose :meth:`flush` waits for and checks every acknowledgement."""

    def __init__(self, producer: KafkaProducer) -> None:
        self._p = producer
        self._pending: list[Any] = []

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        self._pending.append(
            self._p.send(topic, key=key, value=value, headers=list(headers) if headers else None)
        )

    def flush(self, timeout_s: float = 120.0) -> int:
        """Block until every send since the last flush is acknowledged; returns how many."""
        self._p.flush(timeout=timeout_s)
        pending, self._pending = self._pending, []
        for fut in pending:
            if fut.failed():
                raise BrokerError(f"the broker did not acknowledge a message: {fut.exception}")
            if not fut.is_done:
                raise BrokerError(f"no acknowledgement within {timeout_s}s")
        return len(pending)

    def close(self, timeout_s: float = 10.0) -> None:
        self._p.close(timeout=timeout_s)


def connect_producer(k: KafkaSettings, attempts: int | None = None, **kw: Any) -> Producer:
    """An idempotent-safe producer: acks from all in-sync replicas, generous retries."""
    opts = (
        client_options(k)
        | {
            "acks": "all",
            "retries": 2**31 - 1,
            "delivery_timeout_ms": 120_000,
            "linger_ms": 5,
            "batch_size": 256 * 1024,
            "max_in_flight_requests_per_connection": 1,  # retries keep per-key order
        }
        | kw
    )
    return Producer(
        with_retry(
            f"connecting producer to {k.bootstrap_servers}",
            lambda: KafkaProducer(**opts),
            attempts=attempts,
        )
    )


def ensure_topics(
    k: KafkaSettings, topics: dict[str, tuple[int, dict[str, str]]], attempts: int | None = 10
) -> None:
    """Create missing topics: name -> (partitions, configs). Existing topics are left alone."""
    admin = with_retry(
        "connecting admin client", lambda: KafkaAdminClient(**client_options(k)), attempts=attempts
    )
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(n, num_partitions=p, replication_factor=1, topic_configs=c)
            for n, (p, c) in topics.items()
            if n not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker was first
                admin.create_topics(new)
    finally:
        admin.close()
