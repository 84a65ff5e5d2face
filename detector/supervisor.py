"""``anomalyd run --processes N``: N worker processes in one consumer group, supervised.

One worker is one Python process and, with one torch thread, about one core; the
consumer group spreads the readings topic's partitions over the workers, so a host with
N cores runs N of them (the topic needs at least N partitions; a worker without one
idles, not ready). The supervisor only starts, watches and stops them; each child is a
plain ``anomalyd run --processes 1`` with:

- its own HTTP port: child i serves ``/metrics``, ``/healthz``, ``/readyz`` on
  ``http.port + i`` (``0``: each any free port, logged), one Prometheus target each;
- one torch thread unless ``engine.threads`` is set (N processes of one thread each use N
  cores; more threads would only contend);
- ``kafka.client_id`` suffixed ``-i``, so the broker's view of the group names each one.

A child that exits on its own, whatever its code, is restarted after a back-off (1 s,
doubling to 30 s; back to 1 s once a child has run a minute), while the others keep
serving: a worker's exit code does not tell a setting from a broker outage (both are
2). :data:`QUICK_FAILURES` failures in a row of one child, each within a minute of its
start, stop them all and the supervisor exits with the last code (1 for a signal): a
crash loop is the service manager's to see, not the supervisor's to hide. The settings
are checked once before any child starts. SIGTERM and SIGINT are forwarded to every
child; the supervisor waits for their drain and exits 0 when each exited 0, else with
the first other code. On Linux a child also gets SIGTERM if the supervisor dies.

A child whose loop hangs says so on its ``/healthz`` (503); the supervisor asks every few
seconds and kills such a child, which is then restarted as above. Under systemd this
stands in for the children's watchdog pings, which systemd takes from the main process
only.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Protocol

from detector.config import Settings
from detector.errors import ConfigError

__all__ = [
    "QUICK_FAILURES",
    "Child",
    "Spawn",
    "Supervisor",
    "child_env",
    "child_port",
    "http_probe",
    "spawn_cli",
    "usable_cores",
    "worker_count",
]

log = logging.getLogger("anomalyd.supervisor")

QUICK_FAILURES = 5  # failures in a row, each soon after a start, before giving up
HEALTHY_AFTER_S = 60.0  # a child that ran this long starts its back-off afresh
# A child that answered /healthz and then answers nothing this long is frozen (stopped, or
# its GIL held): the watchdog's job that systemd does for a single worker.
SILENT_AFTER_S = 60.0


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a cpuset), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def worker_count(processes: int | str) -> int:
    """``engine.processes`` as a number: ``auto`` is :func:`usable_cores`."""
    return usable_cores() if processes == "auto" else int(processes)


def child_env(settings: Settings, index: int, count: int) -> dict[str, str]:
    """Environment overrides of child ``index``: its torch threads and client id."""
    env = {"ANOMALYD_KAFKA__CLIENT_ID": f"{settings.kafka.client_id}-{index}"}
    if settings.engine.threads is None and count > 1:
        env["ANOMALYD_ENGINE__THREADS"] = "1"
    return env


def child_port(settings: Settings, index: int, count: int) -> int:
    """Child ``index``'s HTTP port: ``http.port + index`` (0 stays 0: any free port)."""
    base = settings.http.port
    if base and base + count - 1 > 65535:
        raise ConfigError(
            f"http.port={base} with {count} processes needs ports up to {base + count - 1}: "
            "lower http.port (ANOMALYD_HTTP__PORT, --http-port) or the processes"
        )
    return base + index if base else 0


class Child(Protocol):
    """What the supervisor needs of a started process (``subprocess.Popen``)."""

    pid: int

    def poll(self) -> int | None: ...
    def send_signal(self, sig: int) -> None: ...


Spawn = Callable[[int], Child]
Probe = Callable[[int], bool | None]  # child i alive? None: cannot tell (yet)


def http_probe(host: str, ports: Sequence[int]) -> Probe:
    """Asks child i's ``/healthz`` on ``ports[i]``: 200 alive, 503 not, else ``None``."""
    local = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    netloc = f"[{local}]" if ":" in local else local
    # No proxy, whatever $http_proxy says: a proxy's own 503 would kill a healthy child.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def probe(index: int) -> bool | None:
        url = f"http://{netloc}:{ports[index]}/healthz"
        try:
            with opener.open(url, timeout=2) as r:
                return bool(r.status == 200)
        except urllib.error.HTTPError as exc:
            return False if exc.code == 503 else None
        except OSError:  # starting, or gone: the exit is seen by poll()
            return None

    return probe


@dataclass
class _Slot:
    index: int
    proc: Child | None = None
    started: float = 0.0
    failures: int = 0  # quick failures in a row
    restart_at: float | None = None
    answered: float | None = None  # when its /healthz last answered (None: not yet)


class Supervisor:
    """Starts ``count`` children with ``spawn(index)`` and keeps them running.

    ``run()`` returns the exit code. Tests pass a ``spawn`` of their own and small
    ``backoff_s``; :meth:`stop` is the signal handler.
    """

    def __init__(
        self,
        spawn: Spawn,
        count: int,
        *,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        healthy_after_s: float = HEALTHY_AFTER_S,
        tick_s: float = 0.2,
        probe: Probe | None = None,
        probe_every_s: float = 5.0,
        silent_after_s: float = SILENT_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spawn = spawn
        self.probe, self.probe_every_s = probe, probe_every_s
        self.silent_after_s = silent_after_s
        self._next_probe = 0.0
        self.slots = [_Slot(i) for i in range(count)]
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.healthy_after_s, self.tick_s = healthy_after_s, tick_s
        self.clock = clock
        self._stop = threading.Event()
        self._signals: list[int] = []

    def stop(self, signum: int = signal.SIGTERM, _frame: FrameType | None = None) -> None:
        """Forward ``signum`` to every child and wind down (signal handler)."""
        self._signals.append(signum)
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)

    def run(self) -> int:
        for slot in self.slots:
            self._start(slot)
        while not self._stop.is_set():
            code = self._watch()
            if code is not None:
                self._stop.set()
                self._wind_down(signal.SIGTERM)
                return code
            if self.probe is not None and self.clock() >= self._next_probe:
                self._kill_hung(self.probe)
                self._next_probe = self.clock() + self.probe_every_s
            self._stop.wait(self.tick_s)
        return self._wind_down(None)

    def _start(self, slot: _Slot) -> None:
        slot.proc, slot.started, slot.restart_at = self.spawn(slot.index), self.clock(), None
        slot.answered = None
        log.info("worker %d started (pid %d)", slot.index, slot.proc.pid)

    def _watch(self) -> int | None:
        """Reap exited children and restart them when due; an exit code to give up with."""
        now = self.clock()
        for slot in self.slots:
            if slot.proc is None:
                if slot.restart_at is not None and now >= slot.restart_at:
                    self._start(slot)
                continue
            rc = slot.proc.poll()
            if rc is None:
                continue
            pid, ran = slot.proc.pid, now - slot.started
            slot.proc = None
            slot.failures = 0 if ran >= self.healthy_after_s else slot.failures + 1
            if slot.failures >= QUICK_FAILURES:
                log.error(
                    "worker %d failed %d times in a row, each within %.0fs of its start "
                    "(last exit %d): stopping all workers",
                    slot.index,
                    slot.failures,
                    self.healthy_after_s,
                    rc,
                )
                return rc if rc > 0 else 1
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** max(slot.failures - 1, 0))
            log.error(
                "worker %d (pid %d) exited %d after %.0fs: restarting it in %.0fs",
                slot.index,
                pid,
                rc,
                ran,
                delay,
            )
            slot.restart_at = now + delay
        return None

    def _kill_hung(self, probe: Probe) -> None:
        """Kill each child whose loop is not alive, or that answered once and has been
        silent for ``silent_after_s`` (frozen); :meth:`_watch` restarts it."""
        now = self.clock()
        for slot in self.slots:
            if slot.proc is None or slot.proc.poll() is not None:
                continue
            alive = probe(slot.index)
            if alive is not None:
                slot.answered = now
            silent = slot.answered is not None and now - slot.answered > self.silent_after_s
            if alive is not False and not silent:
                continue
            why = "its loop is not alive (/healthz)" if alive is False else "it stopped answering"
            log.error(
                "worker %d (pid %d): %s: killing it to restart it", slot.index, slot.proc.pid, why
            )
            slot.proc.send_signal(signal.SIGKILL)

    def _wind_down(self, sig: int | None) -> int:
        """Signal every child (again on each new signal) and wait for all to exit."""
        sent = 0
        code = 0
        while True:
            pending = [s for s in self.slots if s.proc is not None]
            if not pending:
                return code
            forward = [sig] if sig is not None else []
            forward += self._signals[sent:]
            sent = len(self._signals)
            for s in forward:
                for slot in pending:
                    assert slot.proc is not None
                    slot.proc.send_signal(s)  # Popen ignores a child that just exited
            sig = None
            for slot in pending:
                assert slot.proc is not None
                rc = slot.proc.poll()
                if rc is None:
                    continue
                log.info("worker %d (pid %d) exited %d", slot.index, slot.proc.pid, rc)
                # Killed by the stop signal itself (it came before the child's handlers were
                # in place, e.g. while importing torch): a stop, not a failure.
                # 130 and 143: a child whose handlers turned the signal into its exit code.
                stopped = rc in (
                    -signal.SIGTERM,
                    -signal.SIGINT,
                    128 + signal.SIGINT,
                    128 + signal.SIGTERM,
                )
                if rc != 0 and code == 0 and not stopped:
                    code = rc if rc > 0 else 128 - rc  # killed by a signal: 128 + its number
                slot.proc = None
            time.sleep(min(self.tick_s, 0.05))


def die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux prctl)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def spawn_cli(argv: Callable[[int], Sequence[str]], env: Callable[[int], dict[str, str]]) -> Spawn:
    """A ``spawn`` running ``python -m detector <argv(i)>`` with ``env(i)`` over ours."""

    def spawn(index: int) -> Child:
        return subprocess.Popen(
            [sys.executable, "-m", "detector", *argv(index)],
            env=os.environ | env(index),
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )

    return spawn
