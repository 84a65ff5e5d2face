"""Each stream read at the fleet's size: machines of one kind in many sizes.

A fleet's streams share one model and one scaler. Where one pump draws ten times another's
power, its readings and their changes are ten times as large in the scaler's units: the
model errs ten times as much on it and the rules flag its ordinary noise until the stream's
own spread of its errors is learnt (:mod:`detector.core.spread`, hundreds of readings);
a pump a tenth of the typical size moves less than the model's own imprecision, and its
anomalies sink in it. On a simulated daily fleet whose twelve streams were scaled by
factors from 1/10 to 10: recall 1.00 → 0.56, 5 false incidents per 10,000 readings in the
streams' first 1,000 (all on the large ones), no label caught on the three smallest
(docs/quality.md, session 35).

For a channel whose sizes the trainer finds spread over the fleet (:mod:`training.sizes`),
the engine reads a stream's value ``v`` (after the pseudo-log, before the scaler) as::

    u = level_g + (v - level_s) * step_g / step_s

``level_s`` is the mean of the stream's first :data:`READINGS` values of the channel and
``step_s`` the geometric mean of its first :data:`READINGS` second differences
``|(v_t - v_t-1) - (v_t-1 - v_t-2)|`` that are not 0, both frozen after that; ``level_g``
and ``step_g`` are the fleet's typical ones (medians over the training streams of the same
estimates). A second difference does not see a cycle's slope, so a stream first seen on a
daily cycle's flank is measured as one first seen at its crest; a second difference 30x
over the geometric mean so far (a glitch) is skipped, as is one of 0 (a repeat of a
quantised or idle channel says nothing of a size). Until a stream has them, the running
estimates serve: its first value reads as ``level_g``, and the size of its first change
stands in for ``step_s`` until its first second difference. The ratio is kept within
``1 / RATIO_MAX .. RATIO_MAX``. The trainer reads each training stream's history through
this same function from its start, so the model learns what the engine will feed it, cold
starts included. The estimates are a property of the stream: they survive a gap's
restart (not an eviction).

Measured, a size is watched over the channel's first :data:`WATCH` values: a machine idle
in its first readings (its sensor's noise alone) is measured tens of times smaller than it
is, and once running, every change it makes reads tens of times too large: on a probe daily
fleet whose streams idled for their first 100 readings, 93 % of all readings were flagged
(docs/quality.md, session 36). After its size is measured, each channel's log second
differences keep an average over about :data:`RECENT` of them (each taken at most
:data:`GROWN` from it, so a glitch moves it little); when one stands :data:`GROWN` over the
measured size, the stream is measured afresh from its next reading, and the engine starts
it afresh as a new stream. Only upward, and only in that window: a machine measured running
that idles later reads small and alarms nothing (measured afresh on the way down, one that
idles at night would open a false incident every morning), and a stream's fault later in
its life, ten times its noise for hours, stays a fault and is not taken for its size.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "GROWN",
    "MEASURED",
    "OUTLIER",
    "RATIO_MAX",
    "READINGS",
    "RECENT",
    "WATCH",
    "SizeState",
    "Sized",
    "Sizes",
    "check",
    "inverse",
    "measuring",
    "size_step",
]

READINGS = 50  # values (and second differences) a stream's level (and step) are measured over
# The most readings after a (re)start a stream is held unjudged while its size is measured
# (a channel mostly repeating gives a second difference now and then; past this each adds
# a fiftieth or less to its size).
MEASURED = 2 * READINGS
RATIO_MAX = 1000.0  # the most a stream's changes are magnified (a near-still start)
# A second difference under this share of the value is 0: float32 rounds a value of 60 by
# ~4e-6, and a quantised channel's equal changes would differ by that, not by 0 — and
# their logs (-12) would make the stream read thousands of times larger than it is.
ROUNDING = 1e-5
# From a stream's fourth second difference on, one 30x over its geometric mean so far is
# not taken (a glitch among the first readings leaves three such: its jump and return),
# one 30x under it counts as 30x under (a near-zero one would weigh as a huge one).
OUTLIER = math.log(30.0)
# After the size is measured: the span of the average of later log second differences, and
# how far over the measured size it must stand (log 10) for the stream to be measured
# afresh. A documented noise burst (8 u for 60 readings: second differences 8-14x) moves
# the average by at most log 14 x (1 - e^(-60/50)) = 1.8 < log 10; a machine measured idle
# at 1/50 of its size crosses it ~45 readings after it starts.
RECENT = 50
GROWN = math.log(10.0)
# Values of a channel in which its size may be found outgrown: a stream's commissioning
# (the cold start is its first 1,000 readings).
WATCH = 1000


class SizeState(NamedTuple):
    """Per stream and channel (B, F): the level so far, the last value and the last change,
    the mean log of the second differences so far, the counts (B, 2F) of values given (up
    to :data:`WATCH`; the level takes the first :data:`READINGS`) and of second differences
    taken into the size, and once the size is measured the average of the log second
    differences since (its start: the measured size's)."""

    level: Tensor
    prev: Tensor
    delta: Tensor
    step: Tensor
    n: Tensor
    recent: Tensor

    @classmethod
    def zeros(cls, streams: int, features: int) -> SizeState:
        """A fresh state: no value seen yet."""
        return cls(*(torch.zeros(streams, k * features) for k in (1, 1, 1, 1, 2, 1)))

    @classmethod
    def of(cls, row: Any) -> SizeState:
        """The state in a statistics row (its ``size_*`` parts)."""
        return cls(*(getattr(row, f"size_{name}") for name in cls._fields))

    def afresh(self, mask: Tensor) -> SizeState:
        """The state with the ``mask`` (B,) streams' a fresh one."""
        return SizeState(*(torch.where(mask.unsqueeze(1), 0.0, t) for t in self))

    def columns(self) -> dict[str, Tensor]:
        """The statistics row's ``size_*`` parts."""
        return {f"size_{name}": t for name, t in zip(self._fields, self, strict=True)}


class Sizes(NamedTuple):
    """ScoringConfig.sizes on a device: ``on`` (F,) bool, ``level`` and ``step`` (F,) the
    fleet's typical ones (0 and 1 where off)."""

    on: Tensor
    level: Tensor
    step: Tensor

    @classmethod
    def of(cls, sizes: tuple[float, ...], features: int, device: torch.device) -> Sizes | None:
        """``sizes`` (F typical levels, then F typical steps; step 0: the channel as it came)
        checked against ``features``; None when no channel is read at the fleet's size."""
        check(sizes, features)
        if not any(sizes[features:]):
            return None
        level = torch.tensor(sizes[:features], dtype=torch.float32, device=device)
        step = torch.tensor(sizes[features:], dtype=torch.float32, device=device)
        on = step > 0
        return cls(on, torch.where(on, level, 0.0), torch.where(on, step, 1.0))


def check(sizes: tuple[float, ...], features: int) -> None:
    """ValueError unless ``sizes`` is () or F finite levels, then F finite steps >= 0."""
    if not sizes:
        return
    if len(sizes) != 2 * features:
        raise ValueError(f"sizes has {len(sizes)} values, {2 * features} expected")
    if not all(math.isfinite(v) for v in sizes) or any(v < 0 for v in sizes[features:]):
        raise ValueError(f"sizes must be finite levels, then finite steps >= 0: {sizes}")


class Sized(NamedTuple):
    """One reading of each stream at the fleet's size: the values ``u`` (B, F), the state
    after them, ``grown`` (B,) bool the streams that outgrew their measured size (the state
    is theirs too: the caller starts them afresh, :meth:`SizeState.afresh`; the engine
    restarts them as new streams), and the ``ratio`` (B, F) the values were read at (what
    :func:`inverse` reads back with)."""

    u: Tensor
    state: SizeState
    grown: Tensor
    ratio: Tensor


def size_step(v: Tensor, st: SizeState, sz: Sizes) -> Sized:
    """Readings ``v`` (B, F; nan: missing) at the fleet's size: see :class:`Sized`."""
    f = v.shape[1]
    n_val, n_step = st.n[:, :f], st.n[:, f:]  # n_val counts on to WATCH
    seen = sz.on & ~torch.isnan(v)
    learn = seen & (n_val < READINGS)
    watched = n_val < WATCH
    level = torch.where(learn, st.level + (v - st.level) / (n_val + 1), st.level)
    change = v - st.prev  # since the last value given (a gap in between is no change)
    curve = (change - st.delta).abs()
    raw = curve.clamp(min=1e-30).log()
    early = n_step < 3
    logs = torch.where(early, raw, torch.maximum(raw, st.step - OUTLIER))
    typical = early | (logs < st.step + OUTLIER)
    real = seen & (n_val >= 2) & (curve > ROUNDING * v.abs())
    measured = n_step >= READINGS
    taken = real & ~measured & typical
    step = torch.where(taken, st.step + (logs - st.step) / (n_step + 1), st.step)
    n_step = n_step + taken.to(v.dtype)
    near = torch.minimum(torch.maximum(raw, st.recent - GROWN), st.recent + GROWN)
    track = real & measured & watched
    recent = torch.where(track, st.recent + (near - st.recent) / RECENT, st.recent)
    recent = torch.where(measured, recent, step)  # starts at the size as measured
    after = SizeState(
        level,
        torch.where(seen, v, st.prev),
        torch.where(seen & (n_val >= 1), change, st.delta),
        step,
        torch.cat([n_val + (seen & watched).to(v.dtype), n_step], dim=1),
        recent,
    )
    ratio = _ratio(after, sz)
    u = torch.where(sz.on, sz.level + (v - level) * ratio, v)
    return Sized(u, after, (track & (recent - step > GROWN)).any(dim=1), ratio)


def _ratio(st: SizeState, sz: Sizes) -> Tensor:
    """(B, F) the fleet's step over the stream's: until its first second difference, the
    size of its first change stands in for it (1 before that, or if it was 0)."""
    f = st.step.shape[1]
    moved = (st.n[:, :f] >= 2) & (st.delta.abs() > ROUNDING * st.prev.abs())
    first = torch.where(moved, st.delta.abs(), 0.0)
    own = torch.where(st.n[:, f:] > 0, st.step.exp(), first)
    ratio = torch.where(own > 0, sz.step / own.clamp(min=1e-30), 1.0)
    return ratio.clamp(1.0 / RATIO_MAX, RATIO_MAX)


def measuring(st: SizeState, sz: Sizes, age: Tensor) -> Tensor:
    """(B,) streams whose size is still being measured (``st``: before the reading; ``age``
    (B,) readings before it since the stream's (re)start): some sized channel had fewer
    than :data:`READINGS` second differences, and the stream is under :data:`MEASURED`
    readings. The engine judges none of their readings, the one that completes the size
    included: while a size moves, a stream's values move with it (a value 50 changes from
    the level, read 2 % larger, changed by one), and every probe fleet in many sizes opened
    one or two false incidents there: at reading 16 of one stream, at readings 66 and 76 of
    two whose channel with repeats had given 45 second differences, and at the one that
    gave the 50th (docs/quality.md, sessions 35 and 36). A restart with the size known
    judges after the usual warm-up; a channel that gives no second differences (idle, or
    missing) holds a stream back for :data:`MEASURED` readings, not for good."""
    f = st.step.shape[1]
    short = (sz.on & (st.n[:, f:] < READINGS)).any(dim=1)
    return short & (age < MEASURED)


def inverse(u: Tensor, read: Sized, sz: Sizes) -> Tensor:
    """Values ``u`` at the fleet's size (B, F) back in the stream's own, as ``read`` read
    them."""
    return torch.where(sz.on, read.state.level + (u - sz.level) / read.ratio, u)
