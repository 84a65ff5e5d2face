"""Fixtures for the integration tests: one real Kafka broker per session, in a container.

Environment:

- ``ANOMALYD_TEST_KAFKA_IMAGE``: the broker image. Default ``apache/kafka:4.1.0``; when
  that is not present locally but ``anomalyd/kafka-test:4`` (built by
  ``.ci/provision.sh``) is, the latter is used rather than pulling.
- ``ANOMALYD_TEST_REQUIRE_BROKER=1``: no Docker engine (or no image) fails the tests
  instead of skipping them. CI sets it, so a broken runner cannot pass green.
- ``TC_HOST``: where the host reaches published container ports (default 127.0.0.1).

Fixtures: ``kafka_broker`` (bootstrap, stop/start/restart), ``kafka_bootstrap``
("host:port"), ``topic_prefix`` (unique per test), ``create_topic`` (the function
``create_topic(bootstrap, name, partitions=1, configs=None)``), ``make_topic``
(creates ``<topic_prefix>.<suffix>`` on the session broker) and
``kafka_broker_factory`` (private brokers, closed after the test).

Every test in this folder is marked ``integration``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import NoReturn

import pytest
from kafka import KafkaAdminClient

from detector.sandbox.broker import BrokerUnavailable
from detector.sandbox.containerbroker import (
    CI_KAFKA_IMAGE,
    DEFAULT_KAFKA_IMAGE,
    ContainerBroker,
    docker_unavailable_reason,
    start_container_broker,
)

IMAGE_ENV = "ANOMALYD_TEST_KAFKA_IMAGE"
REQUIRE_ENV = "ANOMALYD_TEST_REQUIRE_BROKER"

CreateTopic = Callable[..., str]


def _broker_unavailable(why: str) -> NoReturn:
    how = (
        "Integration tests need a Docker engine: start Docker (on Debian as root: "
        ".ci/start-docker.sh) and let it pull the broker image, or set "
        f"{IMAGE_ENV} to a local one (.ci/provision.sh builds {CI_KAFKA_IMAGE})."
    )
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{why}\n{how}\n({REQUIRE_ENV}=1: failing instead of skipping)", pytrace=False)
    pytest.skip(f"{why}. {how}")


def _start_broker(name_prefix: str) -> ContainerBroker:
    reason = docker_unavailable_reason()
    if reason is not None:
        _broker_unavailable(reason)
    explicit = os.environ.get(IMAGE_ENV)
    image = explicit or DEFAULT_KAFKA_IMAGE
    try:
        return start_container_broker(
            image,
            # An explicitly named image is what the user wants tested: no substitute.
            fallback_image=None if explicit else CI_KAFKA_IMAGE,
            name_prefix=name_prefix,
        )
    except BrokerUnavailable as exc:
        _broker_unavailable(str(exc))


@pytest.fixture(scope="session")
def _session_broker() -> Iterator[ContainerBroker]:
    broker = _start_broker("anomalyd-test-kafka")
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def kafka_broker(_session_broker: ContainerBroker) -> Iterator[ContainerBroker]:
    """The session's broker, with ``bootstrap``, ``stop()``, ``start()``, ``restart()``.

    Its host port survives restarts. A test that leaves it stopped (say, a reliability
    test failing half-way) gets it started again afterwards, so later tests still run.
    """
    yield _session_broker
    if not _session_broker.running:
        _session_broker.start()


@pytest.fixture(scope="session")
def kafka_bootstrap(_session_broker: ContainerBroker) -> str:
    """``host:port`` of the session's broker, reachable from the test process."""
    return _session_broker.bootstrap


@pytest.fixture
def kafka_broker_factory() -> Iterator[Callable[[], ContainerBroker]]:
    """Start private brokers (e.g. to kill one without disturbing other tests)."""
    started: list[ContainerBroker] = []

    def start() -> ContainerBroker:
        broker = _start_broker("anomalyd-test-kafka-private")
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.close()


def unique_name(base: str) -> str:
    """A topic/group name no other test (or earlier run on the same broker) uses."""
    # Kafka names allow [a-zA-Z0-9._-], at most 249 characters.
    cleaned = re.sub(r"[^a-zA-Z0-9._-]+", "-", base).strip("-.")[:180] or "t"
    return f"{cleaned}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> str:
    """A fresh prefix for this test's topics and consumer groups, e.g.
    ``test_roundtrip-1a2b3c4d``; derived from the test name for readable broker logs."""
    return unique_name(request.node.name)


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 1,
    configs: Mapping[str, str] | None = None,
) -> str:
    """Create ``name`` and wait until every partition has a leader; returns ``name``.

    Waiting matters: producing right after CreateTopics can otherwise fail with
    UNKNOWN_TOPIC_OR_PARTITION or land before a consumer sees the partitions.
    """
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="anomalyd-tests-admin")
    try:
        admin.create_topics(
            {
                name: {
                    "num_partitions": partitions,
                    "replication_factor": 1,
                    "configs": dict(configs or {}),
                }
            },
            timeout_ms=30_000,
            wait_for_metadata=True,
        )
    finally:
        admin.close()
    return name


@pytest.fixture(name="create_topic", scope="session")
def _create_topic_fixture() -> CreateTopic:
    """The :func:`create_topic` function, for tests (a conftest is not importable)."""
    return create_topic


@pytest.fixture
def make_topic(kafka_bootstrap: str, topic_prefix: str) -> CreateTopic:
    """``make_topic("readings", partitions=3)`` creates ``<topic_prefix>.readings``."""

    def make(
        suffix: str = "topic", partitions: int = 1, configs: Mapping[str, str] | None = None
    ) -> str:
        return create_topic(kafka_bootstrap, f"{topic_prefix}.{suffix}", partitions, configs)

    return make
