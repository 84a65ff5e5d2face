"""systemd notifications: what a real ``$NOTIFY_SOCKET`` receives from a serving worker.

The socket is a real Unix datagram socket, bound where systemd would bind its own; the
watchdog period is shortened to tenths of a second.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from detector.observability.notify import Notifier

ROOT = Path(__file__).resolve().parents[3]

WATCHDOG_USEC = 200_000  # pings every 0.1 s


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and its path, as systemd's notify socket."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        yield s, path


def _received(s: socket.socket, wait_s: float) -> list[str]:
    """The datagrams that arrive within ``wait_s``."""
    out: list[str] = []
    deadline = time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            out.append(s.recv(4096).decode())
        except TimeoutError:
            break
    return out


class Loop:
    """Stands in for the worker: ``live()`` and ``ready()`` as the probes read them."""

    def __init__(self) -> None:
        self.alive = True

    def live(self) -> tuple[bool, str]:
        return self.alive, "loop last turned 0.1s ago (limit 300s)"

    def ready(self) -> tuple[bool, str]:
        return True, "serving pumps@v3 on 4 partitions"


def test_ready_watchdog_while_alive_and_stopping(systemd: tuple[socket.socket, str]) -> None:
    s, path = systemd
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    loop = Loop()
    notifier = Notifier.from_env(env)
    with notifier.serving(loop.live, loop.ready):
        first = _received(s, 0.5)
        assert first[0] == "READY=1\nSTATUS=serving pumps@v3 on 4 partitions"
        assert "WATCHDOG=1\nSTATUS=serving pumps@v3 on 4 partitions" in first[1:]

        loop.alive = False  # a stuck loop: the pings stop, so systemd restarts it
        _received(s, 0.3)  # a ping already on its way
        stuck = _received(s, 0.5)
        assert stuck and not [m for m in stuck if "WATCHDOG=1" in m]
        assert "STATUS=not alive: loop last turned" in stuck[-1]
    assert _received(s, 0.2)[-1] == "STOPPING=1\nSTATUS=stopping"


def test_abstract_socket_address() -> None:
    name = f"anomalyd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        assert Notifier(f"@{name}").notify("READY=1")
        assert _received(s, 0.5) == ["READY=1"]


def test_children_do_not_inherit_the_socket(systemd: tuple[socket.socket, str]) -> None:
    _, path = systemd
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier.from_env(env)
    assert (notifier.address, notifier.watchdog_s) == (path, 30.0)
    assert env == {}  # systemd accepts messages from the main process only


def test_the_watchdog_of_another_process_is_left_alone(systemd: tuple[socket.socket, str]) -> None:
    s, path = systemd
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(WATCHDOG_USEC), "WATCHDOG_PID": "1"}
    loop = Loop()
    with Notifier.from_env(env).serving(loop.live, loop.ready):
        got = _received(s, 0.4)
    assert got[0].startswith("READY=1") and not [m for m in got if "WATCHDOG=1" in m]


def test_without_systemd_nothing_is_sent_and_nothing_fails() -> None:
    loop = Loop()
    notifier = Notifier.from_env({})
    with notifier.serving(loop.live, loop.ready):
        pass
    assert notifier.notify("READY=1") is False


def test_a_vanished_socket_does_not_crash_the_worker(tmp_path: Path) -> None:
    assert Notifier(str(tmp_path / "gone")).notify("WATCHDOG=1") is False


@pytest.mark.slow
def test_anomalyd_run_under_systemd_waiting_for_its_first_model(
    systemd: tuple[socket.socket, str], tmp_path: Path
) -> None:
    """A unit started before the first training run: started (READY), its watchdog fed
    while it waits, and STOPPING on `systemctl stop` (SIGTERM), exit 0."""
    s, path = systemd
    env = os.environ | {
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        "ANOMALYD_MODEL__DIR": str(tmp_path / "models"),
        "ANOMALYD_HTTP__HOST": "127.0.0.1",
        "ANOMALYD_HTTP__PORT": "0",
        "ANOMALYD_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",  # never reached without a model
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "detector", "run"], env=env, cwd=ROOT, stderr=subprocess.PIPE
    )
    try:
        s.settimeout(60)  # the imports (torch) take a while on a busy machine
        assert s.recv(4096).decode() == "READY=1\nSTATUS=no model loaded"
        assert "WATCHDOG=1" in _received(s, 1.0)[0]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert _received(s, 0.5)[-1] == "STOPPING=1\nSTATUS=stopping"
    finally:
        proc.kill()
        proc.communicate()
