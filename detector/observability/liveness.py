"""Liveness: is the process loop alive? What ``/healthz`` answers.

Alive means the loop turned within ``limit_s`` — or the worker is waiting for something a
restart would not bring sooner (a first model, a broker), so that a Kubernetes liveness
probe does not restart a deployment created before its first training run, over and over.

>>> t = [0.0]
>>> live = Liveness(lambda: t[0], limit_s=10)
>>> t[0] = 11; live.check()[0]
False
>>> with live.waiting("a model"):
...     live.check()
(True, 'starting: waiting for a model')
>>> live.check()[0]  # the wait's end counts as a beat
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["Liveness"]


class Liveness:
    """Heartbeats of a loop, judged against ``limit_s``; waits count as alive."""

    def __init__(self, monotonic: Callable[[], float], limit_s: float) -> None:
        self.monotonic = monotonic
        self.limit_s = limit_s
        self.last = monotonic()
        self._waiting: str | None = None

    def beat(self) -> float:
        """The loop turned now; returns the time."""
        self.last = self.monotonic()
        return self.last

    @contextmanager
    def waiting(self, what: str) -> Iterator[None]:
        """Alive while the block waits for ``what``; a beat when it ends."""
        self._waiting = what
        try:
            yield
        finally:
            self._waiting = None
            self.beat()

    def check(self) -> tuple[bool, str]:
        """(alive, why), as ``/healthz`` reports it."""
        if self._waiting is not None:
            return True, f"starting: waiting for {self._waiting}"
        stale = self.monotonic() - self.last
        return stale < self.limit_s, (
            f"loop last turned {stale:.1f}s ago (limit {self.limit_s:.0f}s)"
        )
