"""``anomalyd run --processes 2`` against a real broker: two workers share the group's
partitions, each consumes and commits its own, and one SIGTERM stops them all."""

from __future__ import annotations

import dataclasses
import os
import random
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.harness import (
    Topics,
    WorkerProc,
    committed,
    end_offsets,
    publish,
    wait_caught_up,
)
from tests.integration.test_worker import _fleet_messages, _model

pytestmark = pytest.mark.integration


def _two_free_ports() -> int:
    """A base port whose successor is free too (child i listens on base + i).

    Below the kernel's ephemeral range: a port the OS hands out (``free_port``) lies in
    it, and between this check and the child's bind an outgoing connection (a Kafka
    client's) could take ``base + 1`` — a CI run failed so.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    if low < 4096:  # no room below it: any two free ports
        low = 65_000
    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(max(1024, low - 12_000), low - 2)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", base))
                b.bind(("127.0.0.1", base + 1))
            return base
        except OSError:
            continue
    raise AssertionError("no two consecutive free ports")


def _children(w: WorkerProc) -> list[WorkerProc]:
    """A handle on each child's HTTP port (the supervisor's proc, for the liveness check)."""
    return [dataclasses.replace(w, port=w.port + i) for i in range(2)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_processes_share_the_partitions_and_sigterm_stops_both(
    kafka_bootstrap: str, make_topic: Callable[..., str], topic_prefix: str, tmp_path: Path
) -> None:
    topics = Topics.named(topic_prefix)
    make_topic(topics.readings.removeprefix(topic_prefix + "."), partitions=2)
    _model(tmp_path / "models")
    w = WorkerProc(
        kafka_bootstrap,
        topics,
        tmp_path / "models",
        "g-procs",
        tmp_path / "w.log",
        env={"ANOMALYD_ENGINE__PROCESSES": "2"},
        port=_two_free_ports(),
    ).start()
    children = _children(w)
    try:
        deadline = time.monotonic() + 120
        # Ready means partitions assigned: both, once the group has settled on two members.
        while not all(c.get("/readyz")[0] == 200 for c in children):
            assert w.proc is not None and w.proc.poll() is None, w.tail()
            assert time.monotonic() < deadline, f"not both ready\n{w.tail()}"
            time.sleep(0.5)
        msgs, n = _fleet_messages(streams=40, ticks=30, batch=1)
        publish(kafka_bootstrap, topics.readings, msgs)
        wait_caught_up(kafka_bootstrap, "g-procs", topics.readings, worker=w)
        per_child = [c.metrics() for c in children]
        scored = [m["anomalyd_readings_total"] for m in per_child]
        assert all(k > 0 for k in scored), scored  # each consumed its partition
        assert sum(scored) == n  # and no reading twice
        assert all(m["anomalyd_commits_total"] >= 1 for m in per_child)
        ends = end_offsets(kafka_bootstrap, topics.readings)
        assert committed(kafka_bootstrap, "g-procs", topics.readings) == ends

        pids = [int(p) for p in re.findall(r"worker \d started \(pid (\d+)\)", w.tail(200))]
        assert len(pids) == 2, w.tail()
        assert w.stop(signal.SIGTERM) == 0, w.tail()
        assert not any(_alive(p) for p in pids), "a worker outlived its supervisor"
        assert all(c.get("/healthz")[0] == 0 for c in children)  # nobody listens any more
    finally:
        if w.proc and w.proc.poll() is None:
            w.stop(signal.SIGKILL)
