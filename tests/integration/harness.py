"""Helpers for integration tests: a worker process, publishing, draining topics."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from tests.alert_schema import SCHEMA, schema_errors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Topics:
    readings: str
    alerts: str
    dlq: str
    state: str

    @classmethod
    def named(cls, prefix: str) -> Topics:
        return cls(f"{prefix}.readings", f"{prefix}.alerts", f"{prefix}.dlq", f"{prefix}.state")


@dataclass
class WorkerProc:
    """An ``anomalyd run`` subprocess with its own HTTP port and log file."""

    bootstrap: str
    topics: Topics
    model_dir: Path
    group: str
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    module: str = "detector"  # what ``python -m`` runs: the CLI, or a test's wrapper of it

    def start(self) -> WorkerProc:
        env = (
            os.environ
            | {
                "ANOMALYD_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
                "ANOMALYD_TOPICS__READINGS": self.topics.readings,
                "ANOMALYD_TOPICS__ALERTS": self.topics.alerts,
                "ANOMALYD_TOPICS__DLQ": self.topics.dlq,
                "ANOMALYD_TOPICS__STATE": self.topics.state,
                "ANOMALYD_CONSUMER__GROUP_ID": self.group,
                "ANOMALYD_CONSUMER__MAX_POLL_RECORDS": "2000",
                "ANOMALYD_CONSUMER__SESSION_TIMEOUT_MS": "10000",
                "ANOMALYD_MODEL__DIR": str(self.model_dir),
                "ANOMALYD_MODEL__RELOAD_INTERVAL_S": "1",
                "ANOMALYD_HTTP__HOST": "127.0.0.1",
                "ANOMALYD_HTTP__PORT": str(self.port),
                "ANOMALYD_ENGINE__DEVICE": "cpu",
                "ANOMALYD_LOG__FORMAT": "json",
            }
            | self.env
        )
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "run"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=3) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def metrics(self) -> dict[str, float]:
        """Samples by name plus labels, e.g. ``anomalyd_bad_readings_total{reason=not_json}``."""
        code, text = self.get("/metrics")
        assert code == 200, f"metrics endpoint answered {code}"
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def wait_ready(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            if self.get("/readyz")[0] == 200:
                return
            time.sleep(0.3)
        raise AssertionError(f"worker not ready within {timeout_s}s\n{self.tail()}")

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout_s)

    def tail(self, n: int = 40) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])


def publish(bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes]]) -> int:
    prod = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    n = 0
    for key, value in messages:
        prod.send(topic, key=key, value=value)
        n += 1
    prod.flush()
    prod.close()
    return n


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    c = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        parts = c.partitions_for_topic(topic) or set()
        ends = c.end_offsets([TopicPartition(topic, p) for p in parts])
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        c.close()


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets (read without joining the group)."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = c.partitions_for_topic(topic) or set()
        out = {}
        for p in parts:
            off = c.committed(TopicPartition(topic, p))
            if off is not None:
                out[p] = off
        return out
    finally:
        c.close(autocommit=False)


def wait_caught_up(
    bootstrap: str, group: str, topic: str, timeout_s: float = 120, worker: WorkerProc | None = None
) -> None:
    """Until the group's committed offsets reach the topic's end offsets."""
    ends = end_offsets(bootstrap, topic)
    deadline = time.monotonic() + timeout_s
    got: dict[int, int] = {}
    while time.monotonic() < deadline:
        got = committed(bootstrap, group, topic)
        if all(got.get(p, 0) >= e for p, e in ends.items()):
            return
        if worker is not None and worker.proc is not None and worker.proc.poll() is not None:
            raise AssertionError(f"worker exited {worker.proc.returncode}\n{worker.tail()}")
        time.sleep(0.5)
    tail = worker.tail() if worker else ""
    raise AssertionError(f"not caught up in {timeout_s}s: committed {got}, ends {ends}\n{tail}")


def drain(bootstrap: str, topic: str, timeout_s: float = 30) -> list[Any]:
    """Every record currently in ``topic`` (all partitions, from the beginning)."""
    ends = end_offsets(bootstrap, topic)
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in ends]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if all(c.position(tp) >= ends[tp.partition] for tp in tps):
                return out
            for recs in c.poll(timeout_ms=500).values():
                out.extend(recs)
        raise AssertionError(f"could not read {topic} to its end within {timeout_s}s")
    finally:
        c.close()


def alerts_of(records: list[Any]) -> list[dict[str, Any]]:
    """The events of alerts-topic records, each checked against the published schema."""
    out = [orjson.loads(r.value) for r in records]
    for doc in out:
        bad = schema_errors(doc, SCHEMA)
        assert not bad, f"an event on the alerts topic breaks docs/alert-event.schema.json: {bad}"
    return out


def wait_progress(w: WorkerProc, at_least: float, timeout_s: float = 90) -> float:
    """Until the worker has scored ``at_least`` readings since it started; returns them."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert w.proc is not None and w.proc.poll() is None, w.tail()
        if w.get("/readyz")[0] == 200:
            n = w.metrics().get("anomalyd_readings_total", 0.0)
            if n >= at_least:
                return n
        time.sleep(0.1)
    raise AssertionError(f"no progress to {at_least} readings in {timeout_s}s\n{w.tail()}")


def stop_all(*workers: WorkerProc) -> None:
    """SIGKILL every worker still running (a test's cleanup)."""
    for w in workers:
        if w.proc is not None and w.proc.poll() is None:
            w.stop(signal.SIGKILL)
