"""Probes: a worker waiting for its first model is alive (not restarted), but not ready.

The worker runs ``start()`` in a thread over the in-memory transport with no model
published; a fake monotonic clock runs past ``max_poll_interval_ms`` while it waits.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from detector.artifacts import publish
from detector.config import ConsumerSettings, EngineSettings, ModelSettings, Settings, StateSettings
from detector.kafka.memory import MemoryBroker, MemoryTransport
from detector.observability.http import HealthServer
from detector.observability.metrics import Metrics
from detector.worker import Worker
from tests.unit.factories import make_bundle

LIMIT_S = 10.0  # the smallest max_poll_interval_ms the settings allow


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _settings(tmp: Path) -> Settings:
    return Settings(
        consumer=ConsumerSettings(max_poll_interval_ms=int(LIMIT_S * 1000)),
        model=ModelSettings(dir=tmp / "models", reload_interval_s=3600),
        engine=EngineSettings(device="cpu"),
        state=StateSettings(checkpoint="off"),
    )


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_waiting_for_a_first_model_is_alive_but_not_ready(tmp_path: Path) -> None:
    clock = FakeClock()
    w = Worker(_settings(tmp_path), MemoryTransport(MemoryBroker()), Metrics(), monotonic=clock)
    started: list[bool] = []
    waiting = threading.Thread(target=lambda: started.append(w.start()), daemon=True)
    http = HealthServer("127.0.0.1", 0, w.metrics.exposition, w.live, w.ready).start()
    try:
        waiting.start()
        _until(lambda: "waiting for a model" in w.live()[1])
        clock.t += 3 * LIMIT_S  # far past max_poll_interval_ms without a model
        assert w.live()[0]
        assert _get(http.port, "/healthz") == (200, "starting: waiting for a model\n")
        assert _get(http.port, "/readyz") == (503, "no model loaded\n")
    finally:
        w.stop()
        waiting.join(timeout=10)
        http.close()
    assert started == [False]


def test_a_loop_that_stops_turning_is_not_alive(tmp_path: Path) -> None:
    publish(tmp_path / "models", make_bundle(features=2, hidden=8, layers=1))
    clock = FakeClock()
    w = Worker(_settings(tmp_path), MemoryTransport(MemoryBroker()), Metrics(), monotonic=clock)
    clock.t += 3 * LIMIT_S  # a slow model load is not a stale loop: start() beats after it
    assert w.start()
    assert w.live()[0] and w.ready()[0] is False  # partitions come with the first poll
    w.turn()
    assert w.ready() == (True, "serving test@v1 on 1 partitions")
    clock.t += LIMIT_S + 1  # a batch that hangs longer than max_poll_interval_ms
    ok, reason = w.live()
    assert not ok and reason == "loop last turned 11.0s ago (limit 10s)"
    w.turn()
    assert w.live()[0]
    w.close()


def test_probes_listen_on_ipv6_when_the_host_says_so() -> None:
    # http.host = "::" was refused ("Address family for hostname not supported; choose
    # another port"): the server was IPv4 only
    import socket

    import pytest

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("this host has no IPv6 loopback")
    http = HealthServer("::", 0, lambda: b"", lambda: (True, "ok"), lambda: (True, "ok")).start()
    try:
        with urllib.request.urlopen(f"http://[::1]:{http.port}/healthz", timeout=5) as r:
            assert (r.status, r.read()) == (200, b"ok\n")
    finally:
        http.close()
