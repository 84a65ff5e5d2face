"""Against a broker that authenticates (SASL_SSL, SCRAM-SHA-512 and OAUTHBEARER, its own
CA): the worker and the trainer connect with the same settings; a wrong password or an untrusted
certificate fails at once with one line naming the setting, and no retry storm; topic
settings (partitions, create=false, replication factor) are honoured or refused clearly.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from detector.config import KafkaSettings, TopicSettings
from detector.errors import BrokerError
from detector.kafka import clients
from detector.sandbox.broker import BrokerUnavailable
from detector.sandbox.containerbroker import CI_KAFKA_IMAGE, docker_unavailable_reason
from tests.integration.harness import Topics, WorkerProc
from tests.integration.secure_broker import SecureBroker, make_tls, start_secure_broker
from tests.integration.test_worker import ALERT_EVERYTHING, FEATURES, _fleet_messages, _model

pytestmark = pytest.mark.integration
USER, PASSWORD = "anomalyd", "right-horse-battery"
FAR_FUTURE_MS = 4_102_444_800_000  # 2100: every record and reading lies before


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    reason = docker_unavailable_reason()
    if reason is not None:
        if os.environ.get("ANOMALYD_TEST_REQUIRE_BROKER") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    image = os.environ.get("ANOMALYD_TEST_KAFKA_IMAGE", CI_KAFKA_IMAGE)
    try:
        b = start_secure_broker(image, tmp_path_factory.mktemp("tls"))
    except BrokerUnavailable as exc:
        if os.environ.get("ANOMALYD_TEST_REQUIRE_BROKER") == "1":
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
    try:
        b.add_user(USER, PASSWORD)
        yield b
    finally:
        b.close()


def _consumed(k: KafkaSettings, topic: str, group: str) -> tuple[int, int]:
    """(records in ``topic``, offsets ``group`` committed on it), read over SASL_SSL."""
    c = clients.connect_consumer(k, attempts=1, group_id=group)
    try:
        tps = [clients.TopicPartition(topic, p) for p in c.partitions_for_topic(topic) or ()]
        ends = c.end_offsets(tps)
        return sum(ends.values()), sum(c.committed(tp) or 0 for tp in tps)
    finally:
        c.close(autocommit=False)


def _partitions(k: KafkaSettings, topic: str) -> set[int]:
    c = clients.connect_consumer(k, attempts=1)
    try:
        return set(c.partitions_for_topic(topic) or ())
    finally:
        c.close()


def test_worker_and_trainer_work_over_sasl_ssl_scram(
    broker: SecureBroker, tmp_path: Path, topic_prefix: str
) -> None:
    from training.kafkasource import from_kafka

    k = broker.settings(USER, PASSWORD)
    topics = Topics.named(topic_prefix)
    clients.ensure_topics(k, {topics.readings: (2, {})})
    msgs, n = _fleet_messages(streams=4, ticks=15, batch=4)
    prod = clients.connect_producer(k, attempts=1)
    for key, value in msgs:
        prod.send(topics.readings, key, value)
    prod.flush()
    prod.close()

    env = broker.env(USER, PASSWORD) | ALERT_EVERYTHING | {"ANOMALYD_TOPICS__PARTITIONS": "3"}
    _model(tmp_path / "models")
    w = WorkerProc(broker.bootstrap, topics, tmp_path / "models", "g-sasl", tmp_path / "w.log", env)
    w.start()
    try:
        deadline = time.monotonic() + 60
        alerts = consumed = 0
        while time.monotonic() < deadline and (alerts < n or consumed < len(msgs)):
            assert w.proc is not None and w.proc.poll() is None, w.tail()
            alerts = _consumed(k, topics.alerts, "g-probe")[0]
            consumed = _consumed(k, topics.readings, "g-sasl")[1]
            time.sleep(1)
        assert (alerts, consumed) == (n, len(msgs)), w.tail()
        assert _partitions(k, topics.alerts) == {0, 1, 2}  # ANOMALYD_TOPICS__PARTITIONS
        assert w.stop() == 0, w.tail()
    finally:
        if w.proc is not None and w.proc.poll() is None:
            w.proc.kill()

    series = from_kafka(k, topics.readings, 0, FAR_FUTURE_MS, FEATURES, idle_ms=10_000)
    assert sum(len(s.ts_ms) for s in series) == n


def test_a_wrong_password_fails_at_once_with_one_line_and_no_retry_storm(
    broker: SecureBroker, tmp_path: Path, topic_prefix: str
) -> None:
    _model(tmp_path / "models")
    before = broker.failed_logins()
    env = (
        os.environ
        | broker.env(USER, "wrong-password")
        | {
            "ANOMALYD_MODEL__DIR": str(tmp_path / "models"),
            "ANOMALYD_TOPICS__ALERTS": f"{topic_prefix}.alerts",
            "ANOMALYD_ENGINE__DEVICE": "cpu",
            "ANOMALYD_HTTP__PORT": "0",
        }
    )
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "detector", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - t0

    errors = [line for line in done.stderr.splitlines() if line.startswith("anomalyd: error:")]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(errors) == 1, done.stderr[-2000:]
    assert "refused the SASL SCRAM-SHA-512 login of 'anomalyd'" in errors[0]
    assert "ANOMALYD_KAFKA__SASL_PASSWORD" in errors[0]
    assert "wrong-password" not in done.stderr + done.stdout
    assert took < 30, f"took {took:.0f}s to give up"
    time.sleep(0.5)  # the broker logs the failure after its authentication delay
    assert broker.failed_logins() - before <= 2  # one login, not a storm


def test_the_brokers_certificate_must_come_from_the_configured_ca(
    broker: SecureBroker, tmp_path: Path
) -> None:
    other = make_tls(tmp_path / "other", ["127.0.0.1"])
    k = broker.settings(USER, PASSWORD).model_copy(update={"ssl_cafile": other.ca})
    with pytest.raises(BrokerError, match="ANOMALYD_KAFKA__SSL_CAFILE"):
        clients.connect_consumer(k, attempts=None)  # not retried: it fails at once


def _unsigned_jwt(exp: float) -> str:
    """What Kafka's unsecured OAUTHBEARER validator accepts while ``exp`` lies ahead."""

    def part(doc: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(doc)).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part({'sub': USER, 'exp': int(exp)})}."


def test_oauthbearer_reads_the_token_file_again_after_the_refresh_interval(
    broker: SecureBroker, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text(_unsigned_jwt(time.time() + 3600))
    k = KafkaSettings(
        bootstrap_servers=broker.bootstrap,
        security_protocol="SASL_SSL",
        sasl_mechanism="OAUTHBEARER",
        sasl_oauth_token_file=token,
        sasl_oauth_token_refresh_s=1,
        ssl_cafile=broker.tls.ca,
    )
    assert _partitions(k, "no-such-topic") == set()  # logged in with the token

    token.write_text(_unsigned_jwt(time.time() - 60))  # the agent wrote an expired one
    time.sleep(1.1)
    with pytest.raises(BrokerError, match="refused the SASL OAUTHBEARER login"):
        clients.connect_consumer(k, attempts=None)


def test_a_revocation_list_and_a_cipher_list_are_applied(broker: SecureBroker) -> None:
    base = broker.settings(USER, PASSWORD)
    k = base.model_copy(update={"ssl_crlfile": broker.tls.crl, "ssl_ciphers": "ECDHE+AESGCM"})
    assert _partitions(k, "no-such-topic") == set()  # connected, TLS 1.2 ciphers restricted

    revoked = base.model_copy(update={"ssl_crlfile": broker.tls.crl_revoking_broker})
    with pytest.raises(BrokerError, match="revoked by ANOMALYD_KAFKA__SSL_CRLFILE"):
        clients.connect_consumer(revoked, attempts=None)


def test_topic_settings_are_honoured_or_refused_with_the_setting_to_change(
    broker: SecureBroker, topic_prefix: str
) -> None:
    k = broker.settings(USER, PASSWORD)
    missing = f"{topic_prefix}.never-created"
    with pytest.raises(BrokerError, match=f"{missing}.*ANOMALYD_TOPICS__CREATE=false"):
        clients.ensure_topics(k, {missing: (1, {})}, settings=TopicSettings(create=False))
    with pytest.raises(BrokerError, match="ANOMALYD_TOPICS__REPLICATION_FACTOR=3"):
        clients.ensure_topics(k, {missing: (1, {})}, settings=TopicSettings(replication_factor=3))
    assert _partitions(k, missing) == set()

    clients.ensure_topics(k, {missing: (4, {})}, settings=TopicSettings(replication_factor=1))
    assert _partitions(k, missing) == {0, 1, 2, 3}
    # Exists now: create=false is satisfied.
    clients.ensure_topics(k, {missing: (1, {})}, settings=TopicSettings(create=False))
