"""The ``difference`` rule: a channel's one-step change, or its change over a few readings,
far beyond what that channel of that stream usually does.

The model forecasts each reading from the stream's state, and where a channel follows its
own coloured noise or a lagged shared load it can err more than the channel's own last
reading would (docs/quality.md, session 13): a level shift's step or a drift's slope is then
a 2-4 σ error, under every threshold a false-alarm budget allows. The change itself, in the
units of that channel's usual changes *in that stream*, is plainer evidence: the
statistical baseline of ``anomalyd evaluate fleet`` judges exactly this and, even with its
thresholds raised to anomalyd's false-alarm rate, caught drifts and level shifts that
anomalyd missed (docs/quality.md, session 26). This rule is that evidence in the engine's
terms, with no model:

- per channel, ``d = x(t) - x(t-1)`` and ``m = (x(t) - x(t-short)) / short`` (scaler units),
  judged only over readings the channel actually gave: ``d`` when it gave the one before
  too, ``m`` when it gave the last ``short`` ones (a change across a missing value spans
  more readings than the spread it is judged by: on a probe fleet with 1 % missing cells
  the two false incidents were such changes, docs/quality.md, session 26);
- each in units of the stream's own spread of it: the mean square over its last ``memory``
  readings (each value cut at ``CLIP`` spreads, so an anomaly teaches the stream little),
  pooled with ``PRIOR`` readings of ``prior`` (the fleet's typical spread of ``d`` and
  ``m`` per channel on the training history) — a new stream is judged by the fleet's until
  its own has weight;
- the statistic is the largest ``|d| / spread / scale`` and ``|m| / spread / scale`` over
  the observed channels; a reading is flagged at ``threshold`` (set by the trainer's
  false-alarm budget, like the other rules'). A trend, not a wrong reading: the reading is
  fed as it is.

``scale`` (per ``d`` and ``m`` of each channel, calibrated; 1 for all when absent) gives each
an equal share of the rule's false alarms. In units of its own spread every change is
unit-sized, but not every channel's tail is a normal's: a channel with symmetric heavy tails
(Student t) reaches 13-15 spreads at the rule's rate where a smooth one reaches 5: four
such channels beside a daily fleet's four set the one threshold for all at 23, where the
rule alone reached none of the fleet's 36 labels (with ``scale``: 5.9, and 10 of them;
docs/quality.md, session 34). ``scale`` is each change's clean tail at the rule's rate over
the least one's (each floored at the trainer's ``floor``).

One fleet-wide threshold (a live stream has no history of its own to set one from); the
per-stream spread is what adapts it to each stream. State per stream: ``short + 5`` floats
per feature (two mean squares and their counts, the channel's run).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from detector.core.rules import Kind, RuleVerdict, Wave, channel_limits
from detector.core.spread import pooled_spread, spread_step
from detector.core.statsrow import DIFF_SHORT

__all__ = [
    "CLIP",
    "PRIOR",
    "SHORT",
    "DifferenceConfig",
    "DifferenceRule",
    "DifferenceState",
    "difference_step",
]

SHORT = DIFF_SHORT  # readings in the short change m (the baseline's short average of them)
PRIOR = 100.0  # readings' worth of the fleet's spread in every stream's
CLIP = 3.0  # spreads beyond which a change adds no more to the stream's spread


@dataclass(frozen=True)
class DifferenceConfig:
    """``memory`` in readings; ``prior`` (the fleet's spread of ``d`` per feature, then of
    ``m``: 2F values, scaler units) and ``threshold`` calibrated (() / 0: the rule is off);
    ``scale`` (2F values as ``prior``; (): all 1)."""

    memory: int = 1000
    prior: tuple[float, ...] = ()
    threshold: float = 0.0
    scale: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        bad = any(not v > 0 for v in self.prior) or any(not 0 < v < math.inf for v in self.scale)
        if self.memory < 1 or not self.threshold >= 0 or bad:
            raise ValueError(
                "difference.memory >= 1, difference.threshold >= 0, a positive "
                "difference.prior and a positive, finite difference.scale needed, got "
                f"{self.memory}, {self.threshold}, {self.prior}, {self.scale}"
            )
        if self.scale and len(self.scale) != len(self.prior):
            raise ValueError(
                f"difference.scale has {len(self.scale)} values but difference.prior "
                f"{len(self.prior)}"
            )

    def ready(self, features: int) -> bool:
        """Calibrated for ``features`` features."""
        return self.threshold > 0 and len(self.prior) == 2 * features

    def to_dict(self) -> dict[str, Any]:
        return {
            "memory": self.memory,
            "prior": list(self.prior),
            "threshold": self.threshold,
            **({"scale": list(self.scale)} if self.scale else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DifferenceConfig:
        prior = tuple(float(v) for v in d.get("prior", ()))
        memory = int(d.get("memory", cls.memory))
        scale = tuple(float(v) for v in d.get("scale", ()))
        return cls(memory, prior, float(d.get("threshold", 0.0)), scale)

    @property
    def scaled(self) -> bool:
        """Whether some change is divided by a scale other than 1."""
        return any(v != 1.0 for v in self.scale)

    def limits(self, device: torch.device | None = None) -> Tensor:
        """Per ``d`` then ``m`` of each feature, the change in spreads that flags:
        ``threshold x scale`` (2F,)."""
        return channel_limits(self.threshold, self.scale, len(self.prior), device)


@dataclass(frozen=True)
class DifferenceState:
    """One wave's rule state: ``last`` (B, SHORT x F) the values of the last ``SHORT``
    readings, newest first (a missing one carried forward); ``run`` (B, F) the readings in
    a row each channel has given up to the last one (0: the last one was missing, or none
    yet); ``n`` (B, 2F) readings in each of ``ms`` (B, 2F), the mean squares of ``d`` and
    ``m``."""

    last: Tensor
    run: Tensor
    n: Tensor
    ms: Tensor


def difference_step(
    st: DifferenceState, x: Tensor, observed: Tensor, prior: Tensor, memory: int
) -> tuple[DifferenceState, Tensor]:
    """The state after readings ``x`` (B, F, scaler units; ``observed`` its mask) and each
    ``|d|`` then ``|m|`` in the stream's spread of it (B, 2F; 0 where not judged); the
    statistic is their largest over ``scale``. ``prior`` (2F,). A zeroed state is a fresh
    stream's. The one definition of the changes: the engine judges on them, the trainer
    calibrates on them."""
    f = x.shape[1]
    prev, old = st.last[:, :f], st.last[:, (SHORT - 1) * f :]
    now = torch.where(observed, x, prev)  # a missing value is carried forward
    change = torch.cat([now - prev, (now - old) / SHORT], dim=1).abs()  # (B, 2F)
    judged = torch.cat([observed & (st.run >= 1), observed & (st.run >= SHORT)], dim=1)
    spread = pooled_spread(prior, st.n, st.ms, PRIOR)
    z = torch.where(judged, change / spread, torch.zeros_like(change))
    n, ms = spread_step(change, spread, CLIP, judged, st.n, st.ms, memory)
    # float32 stops counting at 2**24: a saturated count still reads as long enough
    run = torch.where(observed, (st.run + 1).clamp(max=2.0**24), torch.zeros_like(st.run))
    last = torch.cat([now, st.last[:, : (SHORT - 1) * f]], dim=1)
    return DifferenceState(last, run, n, ms), z


class DifferenceRule:
    """A change far beyond the stream's usual ones: see :func:`difference_step`."""

    name, kind = "difference", Kind.TREND
    columns: tuple[str, ...] = ("diff_last", "diff_run", "diff_n", "diff_ms")
    needs_values = False

    def __init__(self, cfg: DifferenceConfig, device: torch.device) -> None:
        self.cfg = cfg
        self._prior = torch.tensor(cfg.prior, dtype=torch.float32, device=device)
        self._limits = cfg.limits(device)

    def step(self, wave: Wave) -> RuleVerdict:
        row = wave.row
        st = DifferenceState(row.diff_last, row.diff_run, row.diff_n, row.diff_ms)
        nxt, z = difference_step(st, wave.x, wave.observed, self._prior, self.cfg.memory)
        state = {
            "diff_last": nxt.last,
            "diff_run": nxt.run,
            "diff_n": nxt.n,
            "diff_ms": nxt.ms,
        }
        return RuleVerdict(self.name, self.kind, (z >= self._limits).any(dim=1), state)
