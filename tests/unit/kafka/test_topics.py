"""ensure_topics and with_retry, over an in-memory stand-in for kafka-python's admin client:
partitions and replication factor as configured, create=false honoured, refusals clear."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError, SaslAuthenticationFailedError

from detector.config import KafkaSettings, TopicSettings
from detector.errors import BrokerError
from detector.kafka import clients

INVALID_REPLICATION_FACTOR = 38
TOPIC_ALREADY_EXISTS = 36
TOPIC_AUTHORIZATION_FAILED = 29


class FakeAdmin:
    """The topics of a cluster, and what create_topics was asked."""

    def __init__(self, existing: set[str], errors: dict[str, tuple[int, str]]) -> None:
        self.existing, self.errors = existing, errors
        self.created: dict[str, dict[str, Any]] = {}

    def __call__(self, **opts: Any) -> FakeAdmin:  # stands in for the class
        return self

    def list_topics(self) -> list[str]:
        return sorted(self.existing)

    def create_topics(self, spec: dict[str, dict[str, Any]], raise_errors: bool) -> Any:
        assert raise_errors is False
        results = []
        for name, s in spec.items():
            code, msg = self.errors.get(name, (0, ""))
            if code == 0:
                self.created[name] = s
                self.existing.add(name)
            results.append({"name": name, "error_code": code, "error_message": msg})
        return {"topics": results}

    def close(self) -> None:
        pass


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeAdmin]:
    def make(existing: set[str] = frozenset(), **errors: tuple[int, str]) -> FakeAdmin:  # type: ignore[assignment]
        admin = FakeAdmin(set(existing), errors)
        monkeypatch.setattr(clients, "KafkaAdminClient", admin)
        return admin

    return make


K = KafkaSettings()


def test_missing_topics_get_their_partitions_and_the_configured_replication_factor(
    cluster: Callable[..., FakeAdmin],
) -> None:
    admin = cluster({"alerts"})
    clients.ensure_topics(
        K,
        {"alerts": (3, {}), "dlq": (3, {}), "state": (1, {"cleanup.policy": "compact"})},
        settings=TopicSettings(replication_factor=3),
    )
    assert admin.created == {
        "dlq": {"num_partitions": 3, "replication_factor": 3, "configs": {}},
        "state": {
            "num_partitions": 1,
            "replication_factor": 3,
            "configs": {"cleanup.policy": "compact"},
        },
    }


def test_without_a_replication_factor_the_brokers_default_applies(
    cluster: Callable[..., FakeAdmin],
) -> None:
    admin = cluster()
    clients.ensure_topics(K, {"alerts": (1, {})})
    assert admin.created["alerts"]["replication_factor"] == -1  # default.replication.factor


def test_create_false_creates_nothing_and_names_the_missing_topics(
    cluster: Callable[..., FakeAdmin],
) -> None:
    admin = cluster({"alerts"})
    with pytest.raises(BrokerError) as err:
        clients.ensure_topics(
            K, {"alerts": (1, {}), "dlq": (1, {})}, settings=TopicSettings(create=False)
        )
    assert "topics dlq do not exist and ANOMALYD_TOPICS__CREATE=false" in str(err.value)
    assert admin.created == {}


def test_a_refused_creation_names_the_settings_to_check(cluster: Callable[..., FakeAdmin]) -> None:
    cluster(
        dlq=(INVALID_REPLICATION_FACTOR, "Replication factor: 3 larger than available brokers: 1.")
    )
    with pytest.raises(BrokerError) as err:
        clients.ensure_topics(K, {"dlq": (1, {})}, settings=TopicSettings(replication_factor=3))
    msg = str(err.value)
    assert "dlq: InvalidReplicationFactorError Replication factor: 3 larger" in msg
    assert "ANOMALYD_TOPICS__REPLICATION_FACTOR=3" in msg


def test_a_principal_without_create_rights_is_told_about_create_false(
    cluster: Callable[..., FakeAdmin],
) -> None:
    cluster(dlq=(TOPIC_AUTHORIZATION_FAILED, "Authorization failed."))
    with pytest.raises(BrokerError, match=r"may not create topics.*ANOMALYD_TOPICS__CREATE=false"):
        clients.ensure_topics(K, {"dlq": (1, {})})


def test_a_topic_another_worker_created_first_is_fine(cluster: Callable[..., FakeAdmin]) -> None:
    cluster(dlq=(TOPIC_ALREADY_EXISTS, "exists"))
    clients.ensure_topics(K, {"dlq": (1, {})})


def test_an_authentication_failure_is_not_retried() -> None:
    slept: list[float] = []

    def login() -> None:
        raise SaslAuthenticationFailedError("invalid credentials")

    with pytest.raises(BrokerError, match=r"ANOMALYD_KAFKA__SASL_PASSWORD.*not retried"):
        clients.with_retry("connecting", login, attempts=None, sleep=slept.append)
    assert slept == []


def test_an_unreachable_broker_is_retried_with_backoff() -> None:
    slept: list[float] = []

    def down() -> None:
        raise KafkaTimeoutError("Unable to bootstrap")

    with pytest.raises(BrokerError, match="failed after 4 attempts"):
        clients.with_retry("connecting", down, attempts=4, sleep=slept.append)
    assert slept == [0.5, 1.0, 2.0]


def test_a_failed_check_stops_before_the_client_is_built() -> None:
    built: list[int] = []

    def check() -> None:
        raise BrokerError("the broker refused the SASL SCRAM-SHA-512 login")

    with pytest.raises(BrokerError, match="refused"):
        clients.with_retry("connecting", lambda: built.append(1), attempts=None, check=check)
    assert built == []
