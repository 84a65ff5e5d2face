"""The budget's search for thresholds that reproduce themselves (:mod:`training.budget`).

A threshold changes what the engine protects and winsorises, and so the statistics it is
fitted on; each replay's statistics *ask* for a level. The search takes what they ask for
until a level proved too low and one proved too high bracket the fixed point, then steps
between them by false position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MOVED", "ThresholdSearch"]

MOVED = 0.05  # a search's end is stale once another rule's threshold moved this much (log)


@dataclass
class ThresholdSearch:
    """A rule's threshold search: the thresholds proved too low (their statistics asked for
    more) and too high, as (threshold, log(asked / threshold), the other rules' thresholds
    then), and which moved last.

    An end measured while another rule's threshold stood more than ``MOVED`` away is
    dropped: the statistics it came from are gone. Kept, a first round's end held the false
    position near itself round after round (session 10: the sustained threshold stayed at
    its first value, 21 % above what every later round asked for). With no bracket left, a
    rule whose ask turned back (too low last round, too high now, or the reverse) steps
    half way in log space instead of all the way: on coloured noise every rule swung
    between two states each round (error 3.5 and 170), so both ends were dropped each round
    and the search stopped on the floor (session 11)."""

    lo: tuple[float, float, dict[str, float]] | None = None
    hi: tuple[float, float, dict[str, float]] | None = None
    last: int = 0

    def next(self, now: float, asked: float, others: dict[str, float] | None = None) -> float:
        """What the statistics ask for until the fixed point is bracketed; then a false
        position step in log space (Illinois: an end kept twice has its weight halved)."""
        ctx = dict(others or {})
        if self.lo is not None and not _near(self.lo[2], ctx):
            self.lo = None
        if self.hi is not None and not _near(self.hi[2], ctx):
            self.hi = None
        g = math.log(asked / now)
        turned = self.last != 0 and (g > 0) != (self.last > 0)
        if g > 0:
            if self.last > 0 and self.hi is not None:
                self.hi = (self.hi[0], self.hi[1] / 2, self.hi[2])
            self.lo, self.last = (now, g, ctx), 1
        else:
            if self.last < 0 and self.lo is not None:
                self.lo = (self.lo[0], self.lo[1] / 2, self.lo[2])
            self.hi, self.last = (now, g, ctx), -1
        if self.lo is None or self.hi is None:
            return math.sqrt(now * asked) if turned else asked
        (a, ga, _), (b, gb, _) = self.lo, self.hi
        la, lb = math.log(a), math.log(b)
        return math.exp(la - ga * (lb - la) / (gb - ga)) if gb != ga else asked


def _near(then: dict[str, float], now: dict[str, float]) -> bool:
    return then.keys() == now.keys() and all(
        abs(math.log(now[k] / v)) <= MOVED for k, v in then.items()
    )
