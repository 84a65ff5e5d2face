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
``step_s`` the mean size of its first :data:`READINGS` one-step changes that are not 0 (a
quantised or idle channel repeats; a repeat says nothing of its size), both frozen after
that; ``level_g`` and ``step_g`` are the fleet's typical ones (medians over the training
streams of the same estimates). Until a stream has them, the running means so far serve:
its first value reads as ``level_g``, and it is read at ratio 1 until its first change.
The trainer reads each training stream's history through this same function from its
start, so the model learns what the engine will feed it, cold starts included. The
estimates are a property of the stream: they survive a gap's restart (not an eviction).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["RATIO_MAX", "READINGS", "SizeState", "Sizes", "check", "inverse", "size_step"]

READINGS = 20  # values (and changes) a stream's level (and step) are measured over
RATIO_MAX = 1000.0  # the most a stream's changes are magnified (a near-still start)


class SizeState(NamedTuple):
    """Per stream and channel (B, F): level and step so far, the last value, and the counts
    of values and of changes taken into them (B, 2F: values, then changes)."""

    level: Tensor
    prev: Tensor
    step: Tensor
    n: Tensor


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


def size_step(v: Tensor, st: SizeState, sz: Sizes) -> tuple[Tensor, SizeState]:
    """Readings ``v`` (B, F; nan: missing) at the fleet's size, and the state after them."""
    f = v.shape[1]
    n_val, n_chg = st.n[:, :f], st.n[:, f:]
    seen = sz.on & ~torch.isnan(v)
    learn = seen & (n_val < READINGS)
    level = torch.where(learn, st.level + (v - st.level) / (n_val + 1), st.level)
    change = (v - st.prev).abs()
    moved = seen & (n_val > 0) & (change > 0) & (n_chg < READINGS)
    step = torch.where(moved, st.step + (change - st.step) / (n_chg + 1), st.step)
    n_chg = n_chg + moved.to(v.dtype)
    ratio = torch.where(n_chg > 0, sz.step / step.clamp(min=1e-30), 1.0).clamp(max=RATIO_MAX)
    u = torch.where(sz.on, sz.level + (v - level) * ratio, v)
    n = torch.cat([n_val + learn.to(v.dtype), n_chg], dim=1)
    return u, SizeState(level, torch.where(seen, v, st.prev), step, n)


def inverse(u: Tensor, st: SizeState, sz: Sizes) -> Tensor:
    """Values ``u`` at the fleet's size (B, F) back in the stream's own (``st``: after)."""
    f = u.shape[1]
    n_chg = st.n[:, f:]
    ratio = torch.where(n_chg > 0, sz.step / st.step.clamp(min=1e-30), 1.0).clamp(max=RATIO_MAX)
    return torch.where(sz.on, st.level + (u - sz.level) / ratio, u)
