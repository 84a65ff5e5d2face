"""The built image scores readings from a real broker and serves its metrics.

Needs the image (``.ci/build-app-image.sh`` builds ``anomalyd:ci``; another tag via
ANOMALYD_TEST_IMAGE), a Docker engine, the Kafka broker of the integration tests
(session fixture ``kafka_bootstrap`` -> "host:port" from tests/integration/
conftest.py) and a model, which the image itself trains on a simulated fleet
(``anomalyd train --source simulate``, fixture ``model_dir``).

Skipped when the image or the broker is missing, except with
ANOMALYD_TEST_REQUIRE_BROKER=1 (CI), where that is a failure.

The container runs as in production: read-only root, /tmp a tmpfs, no
capabilities, the model directory mounted read-only. ``--network host`` because
the broker advertises a 127.0.0.1 listener.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.conftest import output, run

# kafka_bootstrap comes from tests/broker.py (a plugin of tests/conftest.py): one session
# broker for the integration and deployment tests.

pytestmark = [pytest.mark.deploy, pytest.mark.integration, pytest.mark.slow]

IMAGE = os.environ.get("ANOMALYD_TEST_IMAGE", "anomalyd:ci")
STARTUP_TIMEOUT_S = 120.0


def _unavailable(message: str) -> None:
    if os.environ.get("ANOMALYD_TEST_REQUIRE_BROKER") == "1":
        pytest.fail(f"{message} (ANOMALYD_TEST_REQUIRE_BROKER=1)")
    pytest.skip(message)


@dataclass(frozen=True)
class ModelDir:
    """A published model directory and the feature names of its model."""

    path: Path
    features: tuple[str, ...]


@pytest.fixture(scope="session")
def model_dir(image: str, tmp_path_factory: pytest.TempPathFactory) -> ModelDir:
    """A small model trained by the image itself on a simulated fleet."""
    path = tmp_path_factory.mktemp("models")
    path.chmod(0o777)  # the container's uid 10001 publishes into it
    trained = run(
        [
            "docker", "run", "--rm", "--read-only", "--tmpfs", "/tmp",
            "--volume", f"{path}:/models", image,
            "train", "--source", "simulate", "--model-dir", "/models", "--epochs", "1",
            "--sim-streams", "4", "--sim-ticks", "300", "--max-seconds", "60",
        ],
        timeout=600,
    )  # fmt: skip
    assert trained.returncode == 0, output(trained)
    current = (path / "CURRENT").read_text().strip()
    manifest = json.loads((path / current / "manifest.json").read_text())
    return ModelDir(path, tuple(manifest["features"]))


@pytest.fixture(scope="session")
def image() -> str:
    if shutil.which("docker") is None:
        _unavailable("docker is not installed")
    probe = run(["docker", "image", "inspect", IMAGE], timeout=60)
    if probe.returncode != 0:
        _unavailable(f"image {IMAGE} is not built: run .ci/build-app-image.sh")
    return IMAGE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            body: bytes = response.read()
            return body.decode()
    except OSError:
        return None


def _sample(scrape: str, name: str) -> float:
    m = re.search(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", scrape, re.M)
    return float(m.group(1)) if m else 0.0


@dataclass(frozen=True)
class Worker:
    container: str
    port: int
    readings_topic: str


@pytest.fixture
def worker(image: str, model_dir: ModelDir, kafka_bootstrap: str) -> Iterator[Worker]:
    port = _free_port()
    suffix = uuid.uuid4().hex[:8]
    topics = {
        "READINGS": f"readings-{suffix}",
        "ALERTS": f"alerts-{suffix}",
        "DLQ": f"dlq-{suffix}",
        "STATE": f"state-{suffix}",
    }
    env = {
        "ANOMALYD_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ANOMALYD_CONSUMER__GROUP_ID": f"anomalyd-image-test-{suffix}",
        "ANOMALYD_HTTP__HOST": "127.0.0.1",
        "ANOMALYD_HTTP__PORT": str(port),
        "ANOMALYD_MODEL__DIR": "/var/lib/anomalyd/models",
        **{f"ANOMALYD_TOPICS__{k}": v for k, v in topics.items()},
    }
    started = run(
        [
            "docker",
            "run",
            "--detach",
            "--network",
            "host",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--volume",
            f"{model_dir.path}:/var/lib/anomalyd/models:ro",
            *(f"--env={k}={v}" for k, v in env.items()),
            image,
            "run",
        ],
        timeout=120,
    )
    assert started.returncode == 0, output(started)
    container = started.stdout.strip()
    try:
        yield Worker(container, port, topics["READINGS"])
        # SIGTERM: the worker drains (batch, flush, commit) and exits 0.
        stopped = run(["docker", "stop", "--time", "60", container], timeout=120)
        assert stopped.returncode == 0, output(stopped)
        code = run(["docker", "wait", container], timeout=60).stdout.strip()
        logs = run(["docker", "logs", container], timeout=60)
        assert code == "0", f"exit code {code} after SIGTERM\n{logs.stdout}\n{logs.stderr}"
    finally:
        subprocess.run(["docker", "rm", "--force", container], capture_output=True, check=False)


def test_image_scores_readings_and_serves_metrics(
    worker: Worker, kafka_bootstrap: str, model_dir: ModelDir
) -> None:
    kafka = pytest.importorskip("kafka")
    producer = kafka.KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        now_ms = int(time.time() * 1000)
        for i in range(50):
            stream = f"pump-{i % 5}"
            value = {
                "stream_id": stream,
                "ts": now_ms + i * 1000,
                "values": {f: float(i % 7) for f in model_dir.features},
            }
            producer.send(
                worker.readings_topic, key=stream.encode(), value=json.dumps(value).encode()
            )
        producer.flush(timeout=30)
    finally:
        producer.close()

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    scrape: str | None = None
    while time.monotonic() < deadline:
        scrape = _scrape(worker.port)
        if scrape is not None and _sample(scrape, "anomalyd_readings_total") > 0:
            break
        time.sleep(1)
    logs = run(["docker", "logs", worker.container], timeout=60)
    assert scrape is not None, f"/metrics never answered\n{logs.stdout}\n{logs.stderr}"
    assert _sample(scrape, "anomalyd_readings_total") > 0, (
        f"no reading scored within {STARTUP_TIMEOUT_S}s\n{scrape}\n{logs.stdout}\n{logs.stderr}"
    )
    assert _sample(scrape, "anomalyd_ready") == 1


def test_image_leaves_the_sandbox_out(image: str) -> None:
    """The runtime image carries what the worker and the trainer need, not the demo's
    testcontainers and docker client; its `anomalyd demo` says what to install."""
    locked = ["docker", "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL"]
    code = (
        "import importlib.util as u; "
        "print([m for m in ('testcontainers', 'docker') if u.find_spec(m)])"
    )
    probe = run([*locked, "--entrypoint", "python3", image, "-c", code], timeout=120)
    assert probe.returncode == 0, output(probe)
    assert probe.stdout.strip() == "[]", output(probe)
    demo = run([*locked, image, "demo", "--duration", "1"], timeout=120)
    assert demo.returncode == 2, output(demo)
    assert "install anomalyd[demo]" in demo.stderr.strip().splitlines()[-1], output(demo)
