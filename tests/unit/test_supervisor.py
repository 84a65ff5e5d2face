"""``anomalyd run --processes N``'s supervisor, with real child processes standing in for workers.

Each child is a tiny Python program: what the supervisor sees of a worker is a process
that runs, exits with a code, and exits 0 on SIGTERM.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from detector.errors import ConfigError
from detector.loading import load_settings
from detector.supervisor import (
    QUICK_FAILURES,
    Child,
    Spawn,
    Supervisor,
    child_env,
    child_port,
    http_probe,
)

# Runs until SIGTERM, then exits 0 (as a worker drains and exits).
SERVE = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "while True: time.sleep(0.05)\n"
)


def spawner(programs: dict[int, list[str]], log: list[int]) -> Spawn:
    """spawn(i): the next program of child i (the last one repeats); ``log`` gets each i."""

    def spawn(index: int) -> Child:
        log.append(index)
        progs = programs[index]
        code = progs[min(log.count(index), len(progs)) - 1]
        return subprocess.Popen([sys.executable, "-c", code])

    return spawn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exits(code: int) -> str:
    return f"import sys; sys.exit({code})"


def run_then_stop(sup: Supervisor, after_s: float) -> int:
    threading.Timer(after_s, sup.stop, args=(signal.SIGTERM,)).start()
    return sup.run()


def test_sigterm_stops_every_child_and_exits_0() -> None:
    started: list[int] = []
    sup = Supervisor(spawner({0: [SERVE], 1: [SERVE]}, started), 2, tick_s=0.02)
    t0 = time.monotonic()
    assert run_then_stop(sup, 1.0) == 0
    assert sorted(started) == [0, 1]
    assert all(s.proc is None for s in sup.slots)  # every child reaped
    assert time.monotonic() - t0 < 10


def test_children_that_turn_the_stop_into_130_or_143_still_stopped_cleanly() -> None:
    # Ctrl-C while the workers start: their CLI exits 130 (KeyboardInterrupt), once read
    # as a failure (the supervisor exited 130 for a plain stop)
    as_cli = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, lambda *_: sys.exit(130))\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))\n"
        "while True: time.sleep(0.05)\n"
    )
    started: list[int] = []
    sup = Supervisor(spawner({0: [as_cli], 1: [as_cli]}, started), 2, tick_s=0.02)
    threading.Timer(1.0, sup.stop, args=(signal.SIGINT,)).start()
    assert sup.run() == 0


def test_a_crashed_child_is_restarted_and_the_others_keep_running() -> None:
    started: list[int] = []
    spawn = spawner({0: [SERVE], 1: [exits(1), SERVE]}, started)
    sup = Supervisor(spawn, 2, backoff_s=0.1, tick_s=0.02)
    assert run_then_stop(sup, 2.0) == 0
    assert started.count(1) == 2  # restarted once, then it served
    assert started.count(0) == 1  # never disturbed


def test_a_child_that_cannot_start_stops_all_with_its_exit_code() -> None:
    started: list[int] = []
    spawn = spawner({0: [SERVE], 1: [exits(2)]}, started)  # e.g. its port is taken
    sup = Supervisor(spawn, 2, backoff_s=0.01, max_backoff_s=0.05, tick_s=0.02)
    t0 = time.monotonic()
    assert sup.run() == 2
    assert started.count(1) == QUICK_FAILURES  # retried: 2 may be a broker outage too
    assert all(s.proc is None for s in sup.slots)  # the healthy one was stopped
    assert time.monotonic() - t0 < 10


def test_a_crash_loop_gives_up_loudly(caplog: pytest.LogCaptureFixture) -> None:
    started: list[int] = []
    spawn = spawner({0: [SERVE], 1: [exits(3)]}, started)
    sup = Supervisor(spawn, 2, backoff_s=0.01, max_backoff_s=0.05, tick_s=0.02)
    assert sup.run() == 3
    assert started.count(1) == QUICK_FAILURES
    assert "failed 5 times in a row" in caplog.text


def test_a_child_whose_loop_hangs_is_killed_and_restarted() -> None:
    started: list[int] = []
    hung = {1}  # child 1's first run says "not alive"; its second is fine

    def probe(index: int) -> bool | None:
        return not (index in hung and started.count(index) == 1)

    spawn = spawner({0: [SERVE], 1: [SERVE]}, started)
    sup = Supervisor(spawn, 2, backoff_s=0.05, tick_s=0.02, probe=probe, probe_every_s=0.1)
    assert run_then_stop(sup, 2.0) == 0
    assert started.count(1) == 2 and started.count(0) == 1


def test_a_child_that_answered_and_went_silent_is_killed_and_restarted() -> None:
    # A frozen child (SIGSTOP, a GIL held) times the probe out: "cannot tell" for ever
    # once kept it, and its partitions stalled while the supervisor fed systemd's watchdog.
    started: list[int] = []
    asked: list[int] = []

    def probe(index: int) -> bool | None:  # child 1's first run answers once, then freezes
        asked.append(index)
        first_run = started.count(1) == 1
        return None if index == 1 and first_run and asked.count(1) > 1 else True

    spawn = spawner({0: [SERVE], 1: [SERVE]}, started)
    sup = Supervisor(
        spawn, 2, backoff_s=0.05, tick_s=0.02, probe=probe, probe_every_s=0.05, silent_after_s=0.3
    )
    assert run_then_stop(sup, 2.0) == 0
    assert started.count(1) == 2 and started.count(0) == 1


def test_http_probe_reads_healthz() -> None:
    from http.server import BaseHTTPRequestHandler, HTTPServer

    codes = iter([200, 503])

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(next(codes))
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    with HTTPServer(("127.0.0.1", 0), Health) as srv:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        probe = http_probe("0.0.0.0", [srv.server_address[1], free_port()])
        assert probe(0) is True
        assert probe(0) is False
        assert probe(1) is None  # nobody listening: starting or gone, not hung
        srv.shutdown()


def test_children_get_their_own_port_client_id_and_one_thread(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("ANOMALYD_ENGINE__THREADS", raising=False)
    monkeypatch.setenv("ANOMALYD_HTTP__PORT", "9400")
    s = load_settings()
    assert [child_port(s, i, 3) for i in range(3)] == [9400, 9401, 9402]
    assert child_env(s, 1, 3) == {
        "ANOMALYD_KAFKA__CLIENT_ID": "anomalyd-1",
        "ANOMALYD_ENGINE__THREADS": "1",
    }
    monkeypatch.setenv("ANOMALYD_ENGINE__THREADS", "2")  # an explicit choice is kept
    assert "ANOMALYD_ENGINE__THREADS" not in child_env(load_settings(), 1, 3)
    monkeypatch.setenv("ANOMALYD_HTTP__PORT", "0")
    assert child_port(load_settings(), 2, 3) == 0  # each picks a free port
    monkeypatch.setenv("ANOMALYD_HTTP__PORT", "65535")
    with pytest.raises(ConfigError, match=r"lower http\.port"):
        child_port(load_settings(), 0, 2)
