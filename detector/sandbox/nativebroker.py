"""A native single-node Kafka broker: the broker's jars from Maven Central, run with ``java``.

The second way :func:`detector.sandbox.localbroker.start_local_broker` gets a broker, when no
Docker engine answers: ``mvn dependency:copy-dependencies`` fetches the broker's classpath
(cached under ``jar_cache_dir``), then ``kafka.tools.StorageTool format`` and
``kafka.Kafka`` run in combined KRaft mode on 127.0.0.1 with free ports.

This module is an edge: it runs subprocesses (mvn, java).
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
from detector.sandbox.broker import (
    KAFKA_VERSION,
    LOG4J_VERSION,
    READY_TIMEOUT_S,
    BrokerUnavailable,
    LocalBroker,
    free_port,
    random_cluster_id,
)

__all__ = ["NativeBroker", "jar_cache_dir", "start_native_broker"]

log = logging.getLogger(__name__)

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by anomalyd: the Kafka broker's jars, for mvn dependency:copy-dependencies. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.anomalyd.local</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

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


def _fetch_jars(workdir: Path, kafka_version: str) -> Path:
    """The broker's classpath folder, fetched with mvn on first use, then reused."""
    libs = jar_cache_dir(kafka_version)
    if (libs / ".complete").exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerUnavailable("mvn is not installed (apt-get install maven)")
    pom = workdir / f"kafka-{kafka_version}-pom.xml"
    pom.write_text(_POM.format(kafka=kafka_version, log4j=LOG4J_VERSION))
    # Fetch into a private folder and rename: a concurrent or interrupted fetch never
    # leaves a half-filled classpath behind.
    libs.parent.mkdir(parents=True, exist_ok=True)
    staging = libs.parent / f".{kafka_version}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    log.info("fetching Kafka %s jars from Maven Central into %s (once)", kafka_version, libs)
    cmd = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies"]
    cmd += ["-DincludeScope=runtime", f"-DoutputDirectory={staging}"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerError(
            f"mvn could not fetch Kafka {kafka_version} from Maven Central "
            f"(exit {done.returncode}):\n{(done.stdout + done.stderr)[-2000:]}"
        )
    (staging / ".complete").touch()
    shutil.rmtree(libs, ignore_errors=True)  # an incomplete earlier attempt
    try:
        staging.rename(libs)
    except OSError:  # another process finished first; its copy is as good as ours
        shutil.rmtree(staging, ignore_errors=True)
    return libs


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
    """Run Kafka from Maven Central jars with the local JVM, with fresh data in ``workdir``."""
    java = shutil.which("java")
    if java is None:
        raise BrokerUnavailable("java is not installed (Kafka 4 needs Java 17+: openjdk-17-jre)")
    if (major := _java_major(java)) < 17:
        raise BrokerUnavailable(f"{java} is Java {major}; Kafka 4 needs Java 17 or newer")
    workdir.mkdir(parents=True, exist_ok=True)
    libs = _fetch_jars(workdir, kafka_version)
    classpath = f"{libs}/*"

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
