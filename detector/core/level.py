"""The ``level`` rule: a channel's level, given the stream's other channels, against its
own recent course — whitened in time, so that a small step that stays is news.

The shift rule (:mod:`detector.core.shift`) smooths each channel's conditional level over
~8 readings and judges it in its spread. A channel whose conditional level wanders of its
own (a cycle the others follow only in part, noise that is not white) has a wide spread
of that level, and a level shift or a slow drift hides in it: on a probe fleet built from
issue 12's independent-fleet description the shipped rules caught 4 of 20 level shifts;
a statistic that knew each channel's course in time caught 17 (docs/quality.md, session
44). This rule is that statistic, online, O(1) state per channel:

- ``r = x - ref``: each channel's reading against its reference ``ref`` (an EW average
  over ~``slow`` readings);
- ``c_f = (P r)_f / sqrt(P_ff)``: ``r_f`` given the stream's other channels (``P`` the
  inverse of ``r``'s EW covariance over ~``memory`` readings, pooled with ``prior`` as
  the shift rule pools its own, :func:`detector.core.shift.standardised_residuals`): a
  load change moves every channel as usual and leaves ``c`` small;
- ``e_f = (c_f - phi_f c_f') / s_f``: ``c``'s one-step innovation, ``phi_f`` its AR(1)
  coefficient and ``s_f`` the innovation's spread, each an EW average over ~``memory``
  of the channel's own values (``phi`` is 0 until it gave more than ``AR_WARM``): a
  channel whose conditional level wanders slowly is judged by what is new in it;
- the evidence of a step that stays: for each span ``L`` in :data:`SPANS`, the EW average
  of ``e`` over ~``L`` readings in its own spread (``sqrt(a / (2 - a))``, ``a = 2 / (L +
  1)``, for white unit ``e``), then in the stream's own spread of it (below) and over
  ``scale`` (calibrated per span and channel; 1 when absent); the statistic is the
  largest over spans and channels.

``scale`` gives each span and channel an equal share of the rule's false alarms, as the
shift rule's per-channel scale does: ``e`` is white only as far as an AR(1) describes the
conditional level, and what it leaves — a cycle no other channel explains, a square
edge — has a slow mean that a long span's average reads, in units of white noise, as a
step (a clean daily dev fleet's streams sat at 5-7 on the longest span for a hundred
readings at a time; docs/quality.md, session 45). ``scale`` is the level each span and
channel's own clean tail reaches at the rule's rate, over the least such level.

How much of that slow mean a stream has is its own (a cycle's share of a channel's
movement differs from stream to stream), so each span and channel's average is judged in
the stream's own spread of it, as the sustained rule's averages are
(:mod:`detector.core.spread`): its mean square over the stream's last ``memory`` judged
readings (each cut at ``OWN_CLIP`` spreads, none from a run it holds still in), pooled
with ``spread`` (the fleet's RMS of it on clean history, calibrated; 1 when absent) as
``OWN_PRIOR`` readings (as many as ``memory``'s default). It outlives a gap's restart, as
the stream's character does.

A reading is flagged when the statistic reaches ``threshold`` (the trainer sets it to the
false-alarm budget, like the other rules'), once the stream has run ``warmup + slow``
readings since a (re)start. While the stream is inside an anomalous run (at most
``protect_max`` readings) the reference, the covariance, ``phi`` and ``s`` hold still, as
the shift rule's do, until this rule has flagged in the stream's open incident itself
(then its catch is made, and it learns through the rest of that incident; held on its own
flags, a slow wander of a clean stream stayed flagged for as long as the hold lasted;
without incidents there is no record of its flags, and it never holds still); the
averages of ``e`` go on (they are the evidence). A missing value
has ``r``, ``c`` and ``e`` 0, teaches its channel nothing (its averages of ``e`` decay)
and is not judged; a channel is judged once it gave ``slow`` values; a held channel
(:mod:`detector.core.held`) is never read, as by the shift rule.

Memory: ``F^2 + 18 F`` floats per stream; the rule is for models of 2..``MAX_FEATURES``
features, like the shift rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from detector.core.incidents import rule_flagged
from detector.core.rules import Kind, RuleVerdict, Wave, channel_limits
from detector.core.shift import MAX_FEATURES, standardised_residuals
from detector.core.spread import pooled_spread, spread_step
from detector.core.statsrow import LEVEL_AR, LEVEL_BANKS

__all__ = ["AR_BLOCKS", "AR_WARM", "SPANS", "LevelConfig", "LevelRule", "LevelState", "level_step"]

SPANS = (1, 8, 32, 128)  # readings in each average of the innovations
AR_BLOCKS = LEVEL_AR  # per channel: the last c, E[c c'], E[c'^2], E[eta^2]
assert len(SPANS) == LEVEL_BANKS  # one block of the row per span
AR_WARM = 50  # a channel's values before its AR(1) coefficient is used (0 until then)
# Readings' worth of the fleet's spread pooled into a stream's own: as many as the own
# spread's memory, so that it weighs at most half. A long span's average is ~memory / span
# independent values over that memory (8 at span 128): at 100 readings the stream's own
# estimate dominated and its noise made the statistic's tail heavy (on the dev fleets,
# the rule alone calibrated at its share of the budget: 83 labels reached and 5 clean
# exceedances at 100; 90 and none at 1,000; docs/quality.md, session 45).
OWN_PRIOR = 1000.0
OWN_CLIP = 3.0  # spreads beyond which a reading's average adds no more to its own spread
MAX_PHI = 0.99  # a conditional level that is a random walk is still judged by its changes
_RATES = tuple(2.0 / (n + 1) for n in SPANS)
_SPREADS = tuple(math.sqrt(a / (2.0 - a)) for a in _RATES)  # of an EW average of white e


@dataclass(frozen=True)
class LevelConfig:
    """Spans in readings; ``prior`` and ``threshold`` (0 / (): the rule is off) calibrated."""

    slow: int = 200
    memory: int = 1000
    prior: tuple[float, ...] = ()  # per feature, the typical variance of r (scaler units²)
    threshold: float = 0.0
    scale: tuple[float, ...] = ()  # per span (in SPANS' order), per feature; (): all 1
    spread: tuple[float, ...] = ()  # the same: the fleet's RMS of each average; (): all 1

    def __post_init__(self) -> None:
        if self.slow < 2 or self.memory < 1:
            raise ValueError(
                f"level.slow >= 2 and level.memory >= 1 needed, got {self.slow}, {self.memory}"
            )
        values = (*self.prior, *self.scale, *self.spread)
        if not self.threshold >= 0 or any(not 0 < v < math.inf for v in values):
            raise ValueError(
                f"level.threshold >= 0 and a positive, finite level.prior, level.scale and "
                f"level.spread needed, got {self.threshold}, {self.prior}, {self.scale}, "
                f"{self.spread}"
            )
        for name, v in (("scale", self.scale), ("spread", self.spread)):
            if v and len(v) != len(SPANS) * len(self.prior):
                raise ValueError(
                    f"level.{name} has {len(v)} values; {len(SPANS)} per feature of "
                    f"level.prior ({len(self.prior)}) expected"
                )

    def ready(self, features: int) -> bool:
        """Calibrated for ``features`` features (and a model it can serve)."""
        return self.threshold > 0 and len(self.prior) == features and 2 <= features <= MAX_FEATURES

    def to_dict(self) -> dict[str, Any]:
        return {
            "slow": self.slow,
            "memory": self.memory,
            "prior": list(self.prior),
            "threshold": self.threshold,
            **({"scale": list(self.scale)} if self.scale else {}),
            **({"spread": list(self.spread)} if self.spread else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LevelConfig:
        spans = {k: int(d[k]) for k in ("slow", "memory") if k in d}
        prior = tuple(float(v) for v in d.get("prior", ()))
        scale = tuple(float(v) for v in d.get("scale", ()))
        spread = tuple(float(v) for v in d.get("spread", ()))
        thr = float(d.get("threshold", 0.0))
        return cls(**spans, prior=prior, threshold=thr, scale=scale, spread=spread)

    def limits(self, device: torch.device | None = None) -> Tensor:
        """Per span and feature, the statistic that flags: ``threshold x scale`` (S F,)."""
        return channel_limits(self.threshold, self.scale, len(SPANS) * len(self.prior), device)


@dataclass(frozen=True)
class LevelState:
    """One wave's rule state: ``ref``, ``taken`` (B, F); ``cov`` (B, F, F); ``ar`` (B,
    ``AR_BLOCKS`` F); ``bank`` (B, S F); ``own`` (B, 2 S F: each average's judged readings,
    then its mean square); ``seen`` (B,) readings since the (re)start."""

    ref: Tensor
    cov: Tensor
    taken: Tensor
    ar: Tensor
    bank: Tensor
    own: Tensor
    seen: Tensor


def bank_statistic(bank: Tensor) -> Tensor:
    """Each average of ``bank`` (B, S F) in its spread for white unit innovations."""
    banks = bank.chunk(len(SPANS), dim=1)
    return torch.cat([b.abs() / s for b, s in zip(banks, _SPREADS, strict=True)], dim=1)


def level_step(
    st: LevelState,
    x: Tensor,
    observed: Tensor,
    hold: Tensor,
    ready: Tensor,
    cfg: LevelConfig,
    prior: Tensor,
    spread: Tensor,
) -> tuple[LevelState, Tensor]:
    """The state after readings ``x`` (B, F, scaler units; ``observed`` its mask) and the
    statistic per span and channel (B, S F; span-major, in the stream's own spread, not
    over ``scale``). ``hold`` (B,) bool keeps what the stream learns still; ``ready`` (B,)
    says the stream is judged (its own spread learns only then). ``spread`` (S F,): the
    fleet's. ``st.seen`` 0 starts the stream afresh (a zeroed state is a fresh one).
    The one definition of the statistic: the engine keeps it, the trainer calibrates on it.
    """
    first = observed & (st.taken <= 0)  # a channel's first value sets its reference
    use = observed & ~first
    r = torch.where(use, x - st.ref, 0.0)
    learn = ~hold.unsqueeze(1)
    ref = torch.where(first, x, torch.where(learn, st.ref + (2.0 / (cfg.slow + 1)) * r, st.ref))
    k = st.taken  # each channel's values before this one (its first: none learnt)
    # A pair learns from readings that give both, at the rate of the sparser one's count
    # (a missing value's r of 0 would teach a sparse channel a variance of a fraction of
    # its own, as the spreads were taught before layout 11).
    pair = (use & learn).unsqueeze(2) & use.unsqueeze(1)
    both = torch.minimum(k.unsqueeze(2), k.unsqueeze(1))
    rate = torch.clamp(1.0 / both.clamp(min=1), min=2.0 / (cfg.memory + 1))
    cov = torch.where(pair, torch.lerp(st.cov, r.unsqueeze(2) * r.unsqueeze(1), rate), st.cov)
    n = st.seen.clamp(min=0)
    weight = torch.clamp(n + 1, max=(cfg.memory + 1) / 2)
    c = torch.where(use, standardised_residuals(cov, weight, r, prior), 0.0)
    prev, sxy, sxx, see = st.ar.chunk(AR_BLOCKS, dim=1)
    learns = use & learn
    a = torch.where(learns, torch.clamp(1.0 / k.clamp(min=1), min=2.0 / (cfg.memory + 1)), 0.0)
    sxy = sxy + a * (c * prev - sxy)
    sxx = sxx + a * (prev * prev - sxx)
    phi = torch.where(k > AR_WARM, (sxy / sxx.clamp(min=1e-9)).clamp(0.0, MAX_PHI), 0.0)
    eta = torch.where(use, c - phi * prev, 0.0)
    see = see + a * (eta * eta - see)
    e = eta / see.clamp(min=1e-9).sqrt()
    banks = st.bank.chunk(len(SPANS), dim=1)
    bank = torch.cat([b + rt * (e - b) for b, rt in zip(banks, _RATES, strict=True)], dim=1)
    raw = bank_statistic(bank)
    own_n, own_ms = st.own.chunk(2, dim=1)
    own = pooled_spread(spread, own_n, own_ms, OWN_PRIOR)
    # A channel is judged at its own values once it gave ``slow`` of them (one that starts
    # late, a sparse one, a model swapped in onto state this rule never kept: not before).
    judged = (use & (k >= cfg.slow)).repeat(1, len(SPANS))
    counted = judged & (ready & ~hold).unsqueeze(1)
    own_n, own_ms = spread_step(raw, own, OWN_CLIP, counted, own_n, own_ms, cfg.memory)
    ar = torch.cat([torch.where(use, c, prev), sxy, sxx, see], dim=1)
    taken = (st.taken + observed.to(st.taken.dtype)).clamp(max=2.0**24)
    nxt = LevelState(ref, cov, taken, ar, bank, torch.cat([own_n, own_ms], dim=1), st.seen + 1)
    return nxt, torch.where(judged, raw / own, 0.0)


class LevelRule:
    """Some channel's whitened conditional level ``threshold`` or further from its course."""

    name, kind = "level", Kind.TREND
    columns: tuple[str, ...] = (
        "level_ref",
        "level_cov",
        "level_taken",
        "level_ar",
        "level_bank",
        "level_own",
    )
    needs_values = False

    def __init__(
        self,
        cfg: LevelConfig,
        warmup: int,
        protect_max: int,
        device: torch.device,
        skip: tuple[int, ...] = (),
        incidents: bool = True,
    ) -> None:
        """``incidents``: the engine keeps incidents, whose rule mask is the record of this
        rule's own flags; without them it never holds still (held on its own flags, it
        would keep a slow clean wander flagged for as long as the hold lasts)."""
        self.cfg, self.warmup = cfg, warmup
        self.protect_max = protect_max if incidents else 0
        self._prior = torch.tensor(cfg.prior, dtype=torch.float32, device=device)
        self._limits = cfg.limits(device)
        width = len(SPANS) * len(cfg.prior)
        spread = cfg.spread or (1.0,) * width
        self._spread = torch.tensor(spread, dtype=torch.float32, device=device)
        use = torch.ones(len(cfg.prior), dtype=torch.bool)
        use[list(skip)] = False  # held channels: their level is known at their updates only
        self._use = None if not skip else use.to(device)

    def step(self, wave: Wave) -> RuleVerdict:
        row, f = wave.row, wave.x.shape[1]
        # Held inside an anomalous run until the rule has flagged in the stream's open
        # incident: in another rule's run a step whose onset that rule saw is taken in whole;
        # once it flagged, its catch is made and it learns again (through the rest of that
        # incident). Held on its own flags, it kept a slow clean wander flagged for 149
        # readings (docs/quality.md, sessions 45-46).
        held = (row.run > 0) & (row.run <= self.protect_max)
        hold = held & ~rule_flagged(row.incident, self.name)
        cov = row.level_cov.reshape(-1, f, f)
        ar, bank, own = row.level_ar, row.level_bank, row.level_own
        st = LevelState(row.level_ref, cov, row.level_taken, ar, bank, own, row.age)
        observed = wave.observed if self._use is None else wave.observed & self._use
        ready = row.age >= self.warmup + self.cfg.slow
        nxt, stat = level_step(
            st, wave.x, observed, hold, ready, self.cfg, self._prior, self._spread
        )
        hit = ready & (stat >= self._limits).any(dim=1)
        state = {
            "level_ref": nxt.ref,
            "level_cov": nxt.cov.reshape(-1, f * f),
            "level_taken": nxt.taken,
            "level_ar": nxt.ar,
            "level_bank": nxt.bank,
            "level_own": nxt.own,
        }
        return RuleVerdict(self.name, self.kind, hit, state)
