"""Heavy fixture work started at collection, in processes that take only idle CPU.

A few fixtures train and replay models for minutes of CPU (the fleet quality test,
``test_pipeline``). The tests that run before them mostly wait on a broker, a worker or a
container: on CI's two cores a third to a half of the CPU sat idle through them (vmstat,
docs/testing.md). A test module registers such work at import (``background``); once
collection is over, the work of every module with a selected test starts in worker
processes of the lowest priority, and the fixture takes its result (waiting for it if it
is not done). The computation is the same as in the test process: only when it runs
changes. A module whose tests are all deselected starts nothing.

Lowest priority, on Linux: each worker starts a session of its own and sets that session's
autogroup to nice 19 (with autogroups on, a plain ``nice`` only ranks a process within its
own session, and a worker started by pytest would still take half a core from a broker's
container), and its own nice to 19 (for kernels without autogroups).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Generic, TypeVar

import pytest

from detector.supervisor import usable_cores

T = TypeVar("T")
_PR_SET_PDEATHSIG = 1  # prctl(2)


def _idle_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the session stops its workers itself
    # What the work prints (a trainer prints its model's path) would land between pytest's
    # progress dots; its errors reach the fixture as the call's exception.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    try:
        os.setsid()  # out of pytest's process group: tied to its life instead (below)
        Path("/proc/self/autogroup").write_text("19")
    except OSError:  # no autogroups (or not Linux): the process's own nice still ranks it
        pass
    os.nice(19)
    # A session killed outright (SIGKILL, a CI cancel) takes its workers with it; where
    # there is no prctl (not Linux), sessionfinish still stops them.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    import torch

    torch.set_num_threads(1)  # one worker a core: the workers are the parallelism


class Background(Generic[T]):
    """``call(workdir)`` as registered by a test module: run in an idle-priority worker
    once collection selects one of the module's tests, else in-process when asked."""

    def __init__(self, module: str, name: str, call: Callable[[Path], T]) -> None:
        self.module, self.name, self.call = module, name, call
        self._future: Future[T] | None = None

    def _start(self, pool: ProcessPoolExecutor, root: Path) -> None:
        workdir = root / self.name
        workdir.mkdir()
        self._future = pool.submit(self.call, workdir)

    def result(self, tmp: Path) -> T:
        """The call's result; ``tmp`` is its workdir when it was not started in the
        background (the module run without this plugin)."""
        if self._future is None:
            return self.call(tmp)
        t0 = time.monotonic()
        try:
            out = self._future.result()
        except BrokenProcessPool as e:
            # A worker that died (the OOM killer, a signal) breaks the pool and every job
            # in it; the work is the same in-process, so the tests still run.
            print(f"\n[prefetch] {self.name}: the worker pool broke ({e}); running it here")
            self._future = None
            return self.call(tmp)
        print(f"\n[prefetch] {self.name}: waited {time.monotonic() - t0:.0f}s for its result")
        return out


_REGISTERED: list[Background[object]] = []


def background(module: str, name: str, call: Callable[[Path], T]) -> Background[T]:
    """Registers ``call`` (a picklable module-level function or ``functools.partial`` of
    one, taking a fresh work directory) for the test module ``module`` (its ``__name__``)."""
    job = Background(module, name, call)
    _REGISTERED.append(job)  # type: ignore[arg-type]
    return job


class _Pool:
    def __init__(self) -> None:
        self.pool: ProcessPoolExecutor | None = None
        self.root: Path | None = None

    def start(self, jobs: list[Background[object]]) -> None:
        if not jobs:
            return
        self.root = Path(tempfile.mkdtemp(prefix="anomalyd-prefetch-"))
        ctx = multiprocessing.get_context("spawn")  # the session's torch threads: no fork
        self.pool = ProcessPoolExecutor(min(usable_cores(), len(jobs)), ctx, _idle_worker)
        for job in jobs:
            job._start(self.pool, self.root)

    def stop(self) -> None:
        if self.pool is not None:
            # A session that ends early (a failure with -x, Ctrl-C) must not wait minutes
            # for a training nobody will read: 3.11's pool cannot stop a running call.
            for proc in list(getattr(self.pool, "_processes", {}).values()):
                proc.terminate()
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


_POOL = _Pool()


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    first: dict[str, int] = {}
    for i, item in enumerate(session.items):
        module = getattr(item, "module", None)
        if module is not None:
            first.setdefault(module.__name__, i)
    # In the order the tests will need them: a worker is free for the next when one ends.
    wanted = sorted((j for j in _REGISTERED if j.module in first), key=lambda j: first[j.module])
    try:
        _POOL.start(wanted)
    except OSError as e:  # no room for a temporary directory, no processes left
        # Nothing is lost: a job not started runs in-process when its fixture asks.
        print(f"\n[prefetch] background work not started ({e}); fixtures run it themselves")
        _POOL.stop()
        for job in wanted:
            job._future = None


def pytest_sessionfinish(session: pytest.Session) -> None:
    _POOL.stop()
