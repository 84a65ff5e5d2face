"""A local Kafka broker in a container, through testcontainers.

The first way :func:`detector.sandbox.localbroker.start_local_broker` gets a broker, and
the way the integration tests get theirs: the official ``apache/kafka`` image, or
``anomalyd/kafka-test:4`` (built by ``.ci/``, configured the same way) when only that one
is present locally. A single-node KRaft broker (broker + controller) whose client
listener is published on loopback when the Docker engine is local.

This module is an edge: it may import docker and testcontainers.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from detector.kafka.admin import wait_until_ready
from detector.sandbox.broker import (
    KAFKA_VERSION,
    READY_TIMEOUT_S,
    BrokerUnavailable,
    LocalBroker,
    free_port,
    random_cluster_id,
)

__all__ = [
    "CI_KAFKA_IMAGE",
    "DEFAULT_KAFKA_IMAGE",
    "KAFKA_PORT",
    "ContainerBroker",
    "advertised_host",
    "docker_unavailable_reason",
    "kafka_container_env",
    "resolve_image",
    "start_container_broker",
]

log = logging.getLogger(__name__)

DEFAULT_KAFKA_IMAGE = f"apache/kafka:{KAFKA_VERSION}"
# Built by .ci/build-kafka-image.sh where no registry is reachable; same env contract.
CI_KAFKA_IMAGE = "anomalyd/kafka-test:4"
KAFKA_PORT = 9092  # client listener inside the container


def docker_unavailable_reason(timeout_s: float = 5.0) -> str | None:
    """None when a Docker engine answers a ping, else why not (for a skip/error message)."""
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - docker is a testcontainers dependency
        return f"the docker Python package is missing ({exc})"
    try:
        client = docker.from_env(timeout=int(timeout_s))
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # docker raises DockerException, requests errors, OSError...
        where = os.environ.get("DOCKER_HOST", "the default socket /var/run/docker.sock")
        return f"no Docker engine answers at {where}: {exc}"
    return None


def advertised_host() -> str:
    """The address the host reaches published container ports on.

    ``TC_HOST`` (testcontainers' own override) wins; a remote ``DOCKER_HOST=tcp://h``
    means ``h``; otherwise the engine is local and ports are published on loopback.
    """
    override = os.environ.get("TC_HOST") or os.environ.get("TESTCONTAINERS_HOST_OVERRIDE")
    if override:
        return override
    docker_host = os.environ.get("DOCKER_HOST", "")
    if docker_host.startswith(("tcp://", "http://", "https://", "ssh://")):
        return urlparse(docker_host).hostname or "127.0.0.1"
    return "127.0.0.1"


def kafka_container_env(host: str, port: int, cluster_id: str | None = None) -> dict[str, str]:
    """The environment that makes apache/kafka (or anomalyd/kafka-test) a one-node KRaft
    broker whose client listener is advertised as ``host:port``.

    Every setting is given explicitly because the official image drops its own defaults
    as soon as any KAFKA_* variable is set. Clients use EXTERNAL (container port 9092,
    published on the host as ``port``); INTERNAL and CONTROLLER stay inside.
    """
    return {
        "CLUSTER_ID": cluster_id or random_cluster_id(),
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": (
            f"EXTERNAL://0.0.0.0:{KAFKA_PORT},INTERNAL://0.0.0.0:19092,CONTROLLER://0.0.0.0:19093"
        ),
        "KAFKA_ADVERTISED_LISTENERS": f"EXTERNAL://{host}:{port},INTERNAL://localhost:19092",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": (
            "EXTERNAL:PLAINTEXT,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT"
        ),
        "KAFKA_INTER_BROKER_LISTENER_NAME": "INTERNAL",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:19093",
        "KAFKA_LOG_DIRS": "/tmp/kraft-combined-logs",
        # One node: every internal topic has a single replica.
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        # Fewer offsets partitions: the first consumer group is ready in ~1s, not ~10s.
        "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "4",
        # Consumers join at once instead of after the default 3s delay.
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_HEAP_OPTS": "-Xmx768m -Xms256m",
    }


def _image_present(client: Any, image: str) -> bool:
    import docker.errors

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return False
    return True


def resolve_image(image: str, fallback: str | None = None) -> str:
    """The image to run: ``image`` if local, else ``fallback`` if local, else ``image``
    pulled. Raises BrokerUnavailable when none can be had (offline, no registry)."""
    import docker
    import docker.errors

    client = docker.from_env()
    try:
        if _image_present(client, image):
            return image
        if fallback and fallback != image and _image_present(client, fallback):
            log.info("image %s is not present locally; using %s", image, fallback)
            return fallback
        log.info("pulling %s", image)
        try:
            client.images.pull(image)
        except docker.errors.DockerException as exc:
            hint = f" or build {CI_KAFKA_IMAGE} with .ci/provision.sh" if fallback else ""
            raise BrokerUnavailable(f"cannot pull {image} ({exc}); pull it{hint}") from exc
        return image
    finally:
        client.close()


def _disable_ryuk_unless_present() -> None:
    # testcontainers starts its reaper container (Ryuk) before anything else and would
    # try to pull it. Where it is not already present (registry-less CI, offline
    # laptops) go without: close() and the test fixtures remove our containers anyway.
    if "TESTCONTAINERS_RYUK_DISABLED" in os.environ:
        return
    import docker
    from testcontainers.core.config import testcontainers_config

    client = docker.from_env()
    try:
        if not _image_present(client, testcontainers_config.ryuk_image):
            log.info("Ryuk image not present; relying on explicit container cleanup")
            testcontainers_config.ryuk_disabled = True
    finally:
        client.close()


class ContainerBroker(LocalBroker):
    """A broker in a container whose host port stays the same across ``restart()``."""

    def __init__(self, container: Any, host: str, port: int, timeout_s: float) -> None:
        self._container = container  # testcontainers DockerContainer, started
        self.host = host
        self.port = port
        self.bootstrap = f"{host}:{port}"
        self.image: str = container.image
        self._timeout_s = timeout_s
        self._closed = False

    def _died(self) -> str | None:
        wrapped = self._container.get_wrapped_container()
        wrapped.reload()
        if wrapped.status in ("exited", "dead"):
            logs = wrapped.logs(tail=40).decode(errors="replace")
            return f"container exited; last log lines:\n{logs}"
        return None

    def wait_until_ready(self) -> None:
        wait_until_ready(self.bootstrap, self._timeout_s, self._died)

    @property
    def running(self) -> bool:
        """Whether the container runs (not whether the broker already answers)."""
        wrapped = self._container.get_wrapped_container()
        wrapped.reload()
        return bool(wrapped.status == "running")

    def stop(self, timeout_s: int = 30) -> None:
        """Stop the broker (SIGTERM, clean shutdown); its data stays in the container."""
        self._container.get_wrapped_container().stop(timeout=timeout_s)

    def start(self) -> None:
        """Start a stopped broker again on the same port and wait until it answers."""
        self._container.get_wrapped_container().start()
        self.wait_until_ready()

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start; topics and offsets survive."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def logs(self) -> str:
        return str(self._container.get_wrapped_container().logs().decode(errors="replace"))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._container.stop()


def start_container_broker(
    image: str = DEFAULT_KAFKA_IMAGE,
    *,
    fallback_image: str | None = CI_KAFKA_IMAGE,
    host: str | None = None,
    port: int | None = None,
    timeout_s: float = READY_TIMEOUT_S,
    name_prefix: str = "anomalyd-kafka",
    extra_env: Mapping[str, str] | None = None,
) -> ContainerBroker:
    """Run a one-node Kafka in a container and wait until it answers.

    The host port is fixed (chosen free when ``port`` is None) rather than ephemeral,
    because the broker advertises it and must keep it across stop/start.
    """
    reason = docker_unavailable_reason()
    if reason is not None:
        raise BrokerUnavailable(reason)
    from testcontainers.core.container import DockerContainer

    chosen = resolve_image(image, fallback_image)
    _disable_ryuk_unless_present()
    host = host or advertised_host()
    loopback = host in ("127.0.0.1", "localhost")
    bind_ip = "127.0.0.1" if loopback else "0.0.0.0"
    port = port or free_port("127.0.0.1" if loopback else "")
    env = kafka_container_env(host, port) | dict(extra_env or {})
    container = DockerContainer(chosen).with_name(f"{name_prefix}-{uuid.uuid4().hex[:8]}")
    for key, value in env.items():
        container.with_env(key, value)
    # Publish on loopback only when the engine is local: a test broker has no business
    # on the LAN. docker-py takes (ip, port); testcontainers passes `ports` through
    # untouched, though its annotation only admits a port number.
    ports: dict[str, Any] = container.ports
    ports[f"{KAFKA_PORT}/tcp"] = (bind_ip, port)
    log.info("starting Kafka container %s advertised as %s:%d", chosen, host, port)
    container.start()
    broker = ContainerBroker(container, host, port, timeout_s)
    try:
        broker.wait_until_ready()
    except BaseException:
        broker.close()
        raise
    return broker
