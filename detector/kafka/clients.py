"""Kafka clients for the worker and the demo (this package alone imports kafka-python).

``connect_consumer`` / ``connect_producer`` build clients from :class:`KafkaSettings`
(SASL/SSL included; secrets are passed to the client, never logged) and retry with
exponential backoff while no broker answers, logging each attempt. :class:`Producer`
sends and then *waits for every acknowledgement* in :meth:`Producer.flush`, raising
:class:`BrokerError` if any send failed — the worker commits offsets only after that.
Its transactional steps wait a bounded time for the coordinator, then raise BrokerError.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import (
    AuthorizationError,
    IllegalSaslStateError,
    IllegalStateError,
    KafkaConfigurationError,
    KafkaError,
    SaslAuthenticationFailedError,
    TopicAlreadyExistsError,
    UnsupportedSaslMechanismError,
    for_code,
)
from kafka.structs import OffsetAndMetadata

from detector.config import KafkaSettings, TopicSettings
from detector.errors import BrokerError
from detector.kafka.login import check_login
from detector.kafka.security import security_options

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

    The one place they are built: the worker's clients, the trainer's topic reader and
    the simulator all start from here. SASL is on when the security protocol says so
    (SASL_*), TLS for SSL and SASL_SSL (see :mod:`detector.kafka.security`).
    """
    opts: dict[str, Any] = {
        "bootstrap_servers": k.bootstrap_servers.split(","),
        "client_id": k.client_id,
        "security_protocol": k.security_protocol,
        "request_timeout_ms": k.request_timeout_ms,
    }
    return opts | security_options(k)


# Errors a retry cannot fix: the broker refused who we are or what we ask, or the
# options are wrong. Retrying them would only hammer the broker with failed logins.
_FATAL = (
    SaslAuthenticationFailedError,
    UnsupportedSaslMechanismError,
    IllegalSaslStateError,
    AuthorizationError,
    KafkaConfigurationError,
)


def _fatal_hint(exc: KafkaError) -> str:
    if isinstance(exc, SaslAuthenticationFailedError):
        return (
            "the broker refused our credentials; check ANOMALYD_KAFKA__SASL_MECHANISM, "
            "ANOMALYD_KAFKA__SASL_USERNAME and ANOMALYD_KAFKA__SASL_PASSWORD (or _FILE); for "
            "OAUTHBEARER the token, for GSSAPI the Kerberos ticket"
        )
    if isinstance(exc, UnsupportedSaslMechanismError):
        return "set ANOMALYD_KAFKA__SASL_MECHANISM to one the broker enables"
    if isinstance(exc, AuthorizationError):
        return "the broker's ACLs do not allow this principal to do that: ask for the ACL"
    return "fix the kafka settings"


def with_retry(
    what: str,
    fn: Callable[[], T],
    *,
    attempts: int | None = None,
    max_backoff_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    check: Callable[[], None] | None = None,
) -> T:
    """Call ``fn`` until it stops raising KafkaError, backing off exponentially.

    ``attempts=None`` retries forever (a daemon waits for its broker); the last error is
    raised as BrokerError otherwise. Authentication and authorization failures are
    raised as BrokerError at once, with what to check; so is what ``check`` (run before
    each attempt, e.g. :func:`~detector.kafka.login.check_login`) raises.
    """
    delay, n = 0.5, 0
    while True:
        n += 1
        try:
            if check is not None:
                check()
            return fn()
        except _FATAL as exc:
            raise BrokerError(f"{what}: {exc}; {_fatal_hint(exc)} (not retried)") from exc
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
        check=lambda: check_login(k),
    )


class Producer:
    """A producer whose :meth:`flush` waits for and checks every acknowledgement.

    Built with a ``transactional_id``, it also runs Kafka transactions (:meth:`begin`,
    :meth:`commit`, :meth:`abort`): what is sent between ``begin`` and ``commit``
    becomes visible to ``read_committed`` readers at once, with the consumed offsets.
    A commit (its flush, offsets and commit together) and an abort each wait at most
    ``transaction_wait_s`` (by default as long as :meth:`flush` and
    ``delivery_timeout_ms`` wait for a send); ``clock`` measures it.
    """

    def __init__(
        self,
        producer: KafkaProducer,
        *,
        transaction_wait_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._p = producer
        self._pending: list[Any] = []
        self._txn_wait_s = transaction_wait_s
        self._clock = clock

    @property
    def transactional_id(self) -> str | None:
        tid = self._p.config.get("transactional_id")
        return str(tid) if tid else None

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

    def begin(self) -> None:
        """Open a transaction: the sends until :meth:`commit` are one atomic unit."""
        self._p.begin_transaction()

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata], group: Any) -> None:
        """Flush, add the consumed ``offsets`` and commit the open transaction.

        ``group`` is the consumer's ``group_metadata()``: the group coordinator refuses the
        offsets of a member from an older generation (KIP-447), which aborts a zombie's
        transaction whatever its transactional id.
        """
        deadline = self._clock() + self._txn_wait_s  # one wait for the three steps
        self.flush(timeout_s=self._txn_wait_s)
        if offsets:
            self._await_coordinator(
                "sending the consumed offsets to the transaction",
                lambda tm: tm.send_offsets_to_transaction(offsets, group),
                deadline,
            )
        self._await_coordinator(
            "committing the transaction", lambda tm: tm.begin_commit(), deadline
        )

    def abort(self) -> None:
        """Abort the open transaction: ``read_committed`` readers never see its sends."""
        self._pending.clear()
        deadline = self._clock() + self._txn_wait_s
        self._await_coordinator("aborting the transaction", lambda tm: tm.begin_abort(), deadline)

    def _await_coordinator(self, what: str, start: Callable[[Any], Any], deadline: float) -> None:
        """Start one transactional request and wait for it until ``deadline``.

        kafka-python's commit_transaction, abort_transaction and send_offsets_to_transaction
        wait for the coordinator's answer with no timeout: one that stops answering would
        hang the worker for ever. This is their body with the bounded wait its own
        init_transactions uses, hence the private ``_transaction_manager`` and ``_sender``.
        A refusal still raises kafka-python's error (the transport reads its type).
        """
        tm = self._p._transaction_manager
        if tm is None:
            raise IllegalStateError(f"{what}: the producer has no transactional_id")
        result = start(tm)
        self._p._sender.wakeup()
        left_ms = max(0.0, deadline - self._clock()) * 1000
        if not result.wait(timeout_ms=left_ms):
            raise BrokerError(
                f"{what}: no answer from the transaction coordinator within "
                f"{self._txn_wait_s:g}s; check that the brokers are reachable"
            )

    def close(self, timeout_s: float = 10.0) -> None:
        self._p.close(timeout=timeout_s)


def connect_producer(
    k: KafkaSettings,
    attempts: int | None = None,
    transactional_id: str | None = None,
    **kw: Any,
) -> Producer:
    """An idempotent producer: acks from all in-sync replicas, generous retries.

    Idempotence lets the broker drop the duplicate a retried send would otherwise write.
    With ``transactional_id`` the producer is transactional and its transactions are
    initialised here: this fences any older producer of the same id (a killed process
    of the same instance) and aborts the transaction it left open.
    """
    opts = (
        client_options(k)
        | {
            "acks": "all",  # idempotence requires it (kafka-python refuses otherwise)
            "enable_idempotence": True,
            "retries": 2**31 - 1,
            "delivery_timeout_ms": 120_000,
            "linger_ms": 5,
            "batch_size": 256 * 1024,
            "max_in_flight_requests_per_connection": 1,  # retries keep per-key order
        }
        | ({"transactional_id": transactional_id} if transactional_id else {})
        | kw
    )
    p = with_retry(
        f"connecting producer to {k.bootstrap_servers}",
        lambda: KafkaProducer(**opts),
        attempts=attempts,
        check=lambda: check_login(k),
    )
    if transactional_id:
        with_retry(
            f"initialising transactions as {transactional_id!r}",
            p.init_transactions,
            attempts=attempts,
        )
    return Producer(p, transaction_wait_s=k.transaction_wait_s)


def ensure_topics(
    k: KafkaSettings,
    topics: Mapping[str, tuple[int, Mapping[str, str]]],
    attempts: int | None = 10,
    *,
    settings: TopicSettings | None = None,
) -> None:
    """Create missing topics: name -> (partitions, configs). Existing topics are left alone.

    ``settings`` (``ANOMALYD_TOPICS__*``) give the replication factor (None: the broker's
    ``default.replication.factor``) and whether to create at all: with ``create=false``
    a missing topic is a BrokerError naming it.
    """
    t = settings or TopicSettings()
    admin = with_retry(
        f"connecting admin client to {k.bootstrap_servers}",
        lambda: KafkaAdminClient(**client_options(k)),
        attempts=attempts,
        check=lambda: check_login(k),
    )
    try:
        missing = sorted(set(topics) - set(admin.list_topics()))
        if not missing:
            return
        if not t.create:
            raise BrokerError(
                f"topics {', '.join(missing)} do not exist and ANOMALYD_TOPICS__CREATE=false: "
                "have them created (see docs/deploy.md, Kafka security and topics) or set "
                "ANOMALYD_TOPICS__CREATE=true"
            )
        rf = t.replication_factor or -1  # -1: the broker's default (Kafka >= 2.4)
        spec = {
            n: {"num_partitions": topics[n][0], "replication_factor": rf, "configs": topics[n][1]}
            for n in missing
        }
        try:
            result = admin.create_topics(spec, raise_errors=False)
        except KafkaError as exc:
            raise BrokerError(f"creating topics {', '.join(missing)}: {exc}") from exc
        _raise_create_errors(result, t)
        log.info("created topics %s (replication factor %s)", ", ".join(missing), rf)
    finally:
        admin.close()


def _raise_create_errors(result: Mapping[str, Any], t: TopicSettings) -> None:
    errors, denied = [], False
    for topic in result.get("topics", []):
        err = for_code(topic.get("error_code", 0))
        if err.errno == 0 or err is TopicAlreadyExistsError:  # another worker was first
            continue
        denied |= issubclass(err, AuthorizationError)
        errors.append(f"{topic.get('name')}: {err.__name__} {topic.get('error_message') or ''}")
    if denied:
        raise BrokerError(
            f"this principal may not create topics ({'; '.join(e.strip() for e in errors)}): "
            "have them created and set ANOMALYD_TOPICS__CREATE=false, or ask for the ACL"
        )
    if errors:
        raise BrokerError(
            f"creating topics failed ({'; '.join(e.strip() for e in errors)}); check "
            f"ANOMALYD_TOPICS__PARTITIONS={t.partitions} and "
            f"ANOMALYD_TOPICS__REPLICATION_FACTOR={t.replication_factor or 'broker default'}, "
            "or create the topics yourself and set ANOMALYD_TOPICS__CREATE=false"
        )
