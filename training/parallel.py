"""Independent replays side by side, in worker processes of one torch thread each.

The budget's calibration replays each *part* — the shipped model's held-out streams, each
cross-fit fold's — through an engine of its own, and the parts share nothing until their
statistics are pooled. A replay of a few streams is one short engine step per reading,
almost all per-step overhead on one core (docs/training.md, "Training time"), so N cores
replay N parts at once. Each call runs the same computation in a worker as in-process:
the results are the same (``tests/unit/training/test_parallel.py``).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import TypeVar

import torch

from detector.observability.logs import LEVELS, JsonFormatter, configure_logging

__all__ = ["Jobs"]

log = logging.getLogger("anomalyd.training")

T = TypeVar("T")


def _log_setup() -> tuple[str, str] | None:
    """This process's log level and format, for the workers (None: logging not set up)."""
    root = logging.getLogger()
    level = logging.getLevelName(root.level)
    if not root.handlers or level not in LEVELS:  # e.g. a caller's own level: workers default
        return None
    json = any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    return level, "json" if json else "text"


def _start_worker(log_setup: tuple[str, str] | None) -> None:
    # One torch thread: the workers are the parallelism. Signals are the training
    # process's to act on (`train --every` finishes its run on SIGINT / SIGTERM, and
    # systemd sends SIGTERM to the whole group): a worker ignores them and ends with it.
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if log_setup is not None:  # a spawned worker starts unconfigured: log as the trainer does
        configure_logging(*log_setup)


class Jobs:
    """Runs independent calls in up to ``jobs`` worker processes, started on first use and
    kept until the ``with`` block ends (a worker's start, importing torch, costs seconds).

    In-process instead when ``jobs`` is 1, when the device is not the CPU (one CUDA
    context, not one per worker) or when there is only one call. A pool that breaks (a
    worker killed, e.g. out of memory) or cannot start is not retried in new workers: these
    calls and every later one run in-process, with a warning, so a training run ends with
    its model or a clear error. Workers run one torch thread; the in-process path keeps
    the caller's, which is the same computation for these replays' few-stream steps
    (tested: the same thresholds either way).

    >>> from functools import partial
    >>> with Jobs(1) as jobs:
    ...     jobs.map([partial(pow, 2, 3), partial(pow, 3, 2)])
    [8, 9]
    """

    def __init__(self, jobs: int, device: str = "cpu") -> None:
        self.jobs = jobs if device == "cpu" else 1
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Jobs:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pool is not None:  # on an error (Ctrl-C too) without waiting on a replay
            if kind is not None:
                # The workers ignore SIGTERM, and the interpreter's exit joins them: a
                # replay still running would hold the exit for its whole length, then
                # outlive a killed parent. Python 3.11 has no public call for this.
                for proc in list((getattr(self._pool, "_processes", None) or {}).values()):
                    proc.kill()
            self._pool.shutdown(wait=kind is None, cancel_futures=True)
            self._pool = None

    def map(self, calls: Sequence[Callable[[], T]]) -> list[T]:
        """Each call's result, in order. Calls cross to a worker by pickling: pass
        ``functools.partial`` of a module-level function, not a lambda."""
        if self.jobs <= 1 or len(calls) <= 1:
            return [c() for c in calls]
        try:
            if self._pool is None:
                # spawned, not forked: this process's torch threads must not be forked
                ctx = multiprocessing.get_context("spawn")
                workers = min(self.jobs, len(calls))
                self._pool = ProcessPoolExecutor(workers, ctx, _start_worker, (_log_setup(),))
            futures = [self._pool.submit(c) for c in calls]
        except (OSError, NotImplementedError) as exc:  # no worker can start here
            return self._alone(calls, exc)
        try:
            return [f.result() for f in futures]
        except BrokenProcessPool as exc:  # a worker died (a call's own error is raised)
            return self._alone(calls, exc)

    def _alone(self, calls: Sequence[Callable[[], T]], why: BaseException) -> list[T]:
        log.warning("replay workers failed (%s); replaying in this process from now on", why)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool, self.jobs = None, 1
        return [c() for c in calls]
