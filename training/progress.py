"""How long a training step of similar parts has left: cross-fits, budget rounds.

A benchmark-sized history trains for 20 minutes, three quarters of them after the main
fit's per-epoch ETA has ended (docs/quality.md, session 23); these say what is left.
"""

from __future__ import annotations

import time

__all__ = ["PartsEta", "human_s"]


def human_s(seconds: float) -> str:
    """A duration as a person reads it.

    >>> human_s(42.4), human_s(400), human_s(7300)
    ('42 s', '7 min', '2.0 h')
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class PartsEta:
    """Time left of ``parts`` parts: the mean of those done, before any ``first_s``.

    >>> eta = PartsEta(4, first_s=60.0)
    >>> eta.left()
    ' (about 4 min left)'
    >>> PartsEta(3).left()
    ''
    """

    def __init__(self, parts: int, first_s: float | None = None) -> None:
        self.parts, self.first_s = parts, first_s
        self.done, self._t0 = 0, time.monotonic()

    def tick(self) -> None:
        """One part done."""
        self.done += 1

    def left(self, bound: str = "about") -> str:
        """`` (about N min left)`` to append to a log line; empty with nothing to go on."""
        per = (time.monotonic() - self._t0) / self.done if self.done else self.first_s
        if per is None or self.done >= self.parts:
            return ""
        return f" ({bound} {human_s(per * (self.parts - self.done))} left)"
