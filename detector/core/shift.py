"""The ``shift`` rule: a channel whose level left where the stream's other channels put it.

The model's one-step errors cannot see a shifted level for long: it forecasts from the
last reading, so a level shift leaves one large error at its start and none after, and a
drift none that stands out (docs/quality.md, session 5). This rule watches levels instead,
per stream and in the stream's own terms, with no model:

- each channel's *recent level* ``fast`` (an exponentially weighted average over ~``fast``
  readings) and its *reference* ``slow`` (over ~``slow`` readings); their difference
  ``d = fast - slow`` is how far the channel moved lately;
- the covariance ``C`` of ``d`` across channels (over ~``memory`` readings): channels that
  follow a shared load or cycle move together, in the stream's own proportions and signs;
- the deviation of each channel's ``d`` from what the others' predict, in units of its
  spread: ``z_f = (P d)_f / sqrt(P_ff)`` with ``P = C^-1`` (the residual of regressing
  ``d_f`` on the other channels' ``d``, standardised). A load change moves every channel
  as usual and scores little; one channel stepping away scores for as long as it stays.

A reading is flagged when some ``|z_f| / scale_f`` reaches ``threshold`` (the trainer sets
it to the false-alarm budget, like the other rules'), once the stream has run ``warmup + slow``
readings since a (re)start. While the stream is inside an anomalous run (at most
``protect_max`` readings) the reference and the covariance hold still: an anomaly must not
teach the stream that its level is normal. The covariance pools the stream's own average
(weighing at most ``memory / 2`` readings, as an EW average over ``memory`` does) with
``PRIOR_WEIGHT`` readings of ``prior`` (each channel's typical variance of ``d`` on the
training history) *for good*: a stream old enough to have forgotten its prior judged levels
by a covariance of ~10 effective readings (``d`` moves over ~``slow``), and on dev fleets
opened 3x the false incidents calibration, which sees streams under 2,000 readings old,
had asked for (docs/quality.md, session 10). ``prior`` also floors each channel's
variance, so a channel that never moved does not divide by zero.

A held channel (:mod:`detector.core.held`) is never read by this rule: its level is known
at its updates only (every tenth reading, say), which ``fast`` cannot follow; read, it
made the rule miss drifts on a probe fleet (docs/quality.md, session 32).

``scale_f`` (calibrated; 1 for every channel when absent) gives each channel an equal share
of the rule's false alarms. Every ``z_f`` is unit-sized, but a channel whose level change
``d`` forgets fast (white noise: ~``fast`` readings) draws a fresh ``z_f`` ~25x as often as
one that moves with a cycle or a load (~``slow``), so its largest values are larger: four
iid channels beside a fleet's four took the rule's threshold from 3.2 to 5.0 and its recall
of level shifts from 6/6 to 1/6 (docs/quality.md, session 33). ``scale_f`` is the level
channel ``f``'s own clean tail reaches at the rule's rate, over the least such level.

Memory: ``F^2`` floats per stream for the covariance; the rule is for models of
2..``MAX_FEATURES`` features (one channel has no others to be judged against).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from detector.core.rules import Kind, RuleVerdict, Wave, channel_limits
from detector.core.statsrow import MAX_PAIR_FEATURES

__all__ = ["MAX_FEATURES", "PRIOR_WEIGHT", "ShiftConfig", "ShiftRule", "ShiftState", "shift_step"]

MAX_FEATURES = MAX_PAIR_FEATURES  # beyond this the per-stream covariance is not kept
PRIOR_WEIGHT = 50.0  # readings' worth of the prior in every stream's covariance
RIDGE = 0.01  # of each channel's own variance, added to the diagonal (a stable inverse)
FLOOR = 0.01  # of the prior, the least variance a channel is given
# From this many channels on, P comes from a Cholesky factor and a triangular solve, not
# a general inverse: per stream, torch 2.15's CPU inverse (MKL) took 0.1-0.4 us up to 7
# channels and 1.9 us at 8 (0.67 us this way; 1.3 us against 1.0 at 10, 2.6 against 1.9
# at 16), a third of a trained 8-channel model's engine time (docs/benchmarks.md).
CHOLESKY_FROM = 8


@dataclass(frozen=True)
class ShiftConfig:
    """Spans in readings; ``prior``, ``threshold`` (0 / (): the rule is off) and ``scale``
    (optional) calibrated."""

    fast: int = 8
    slow: int = 200
    memory: int = 1000
    prior: tuple[float, ...] = ()  # per feature, the typical variance of d (scaler units²)
    threshold: float = 0.0
    scale: tuple[float, ...] = ()  # per feature, |z| is divided by it (); none: all 1

    def __post_init__(self) -> None:
        if not 1 <= self.fast < self.slow or self.memory < 1:
            raise ValueError(
                "shift.fast >= 1, shift.slow > shift.fast and shift.memory >= 1 needed, got "
                f"{self.fast}, {self.slow}, {self.memory}"
            )
        if not self.threshold >= 0 or any(not v > 0 for v in (*self.prior, *self.scale)):
            raise ValueError(
                f"shift.threshold >= 0, a positive shift.prior and shift.scale needed, got "
                f"{self.threshold}, {self.prior}, {self.scale}"
            )
        if self.scale and len(self.scale) != len(self.prior):
            raise ValueError(
                f"shift.scale has {len(self.scale)} values but shift.prior {len(self.prior)}"
            )

    def ready(self, features: int) -> bool:
        """Calibrated for ``features`` features (and a model it can serve)."""
        return self.threshold > 0 and len(self.prior) == features and 2 <= features <= MAX_FEATURES

    def to_dict(self) -> dict[str, Any]:
        return {
            "fast": self.fast,
            "slow": self.slow,
            "memory": self.memory,
            "prior": list(self.prior),
            "threshold": self.threshold,
            **({"scale": list(self.scale)} if self.scale else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShiftConfig:
        spans = {k: int(d[k]) for k in ("fast", "slow", "memory") if k in d}
        prior = tuple(float(v) for v in d.get("prior", ()))
        scale = tuple(float(v) for v in d.get("scale", ()))
        return cls(**spans, prior=prior, threshold=float(d.get("threshold", 0.0)), scale=scale)

    @property
    def scaled(self) -> bool:
        """Whether some channel's ``|z|`` is divided by a scale other than 1."""
        return any(v != 1.0 for v in self.scale)

    def limits(self, device: torch.device | None = None) -> Tensor:
        """Per feature, the ``|z_f|`` that flags: ``threshold x scale_f`` (F,)."""
        return channel_limits(self.threshold, self.scale, len(self.prior), device)


@dataclass(frozen=True)
class ShiftState:
    """One wave's rule state: ``fast``, ``slow`` (B, F); ``cov`` (B, F, F); ``taken`` (B, F)
    values each channel has given since the (re)start; ``seen`` (B,) readings since then."""

    fast: Tensor
    slow: Tensor
    cov: Tensor
    taken: Tensor
    seen: Tensor


def shift_step(
    st: ShiftState, x: Tensor, observed: Tensor, hold: Tensor, cfg: ShiftConfig, prior: Tensor
) -> tuple[ShiftState, Tensor]:
    """The state after readings ``x`` (B, F, scaler units; ``observed`` its mask) and the
    per-feature ``z`` (B, F). ``hold`` (B,) bool keeps the reference and the covariance
    still. ``st.seen`` 0 starts the stream afresh (a zeroed state is a fresh one).
    The one definition of the statistic: the engine keeps it, the trainer calibrates on it.
    """
    first = observed & (st.taken <= 0)  # a channel's first value sets both levels
    v = torch.where(observed, x, st.fast)  # a missing value moves nothing
    fast = torch.where(first, v, st.fast + (2.0 / (cfg.fast + 1)) * (v - st.fast))
    moving = ~hold.unsqueeze(1)
    slow_next = torch.where(first, v, st.slow + (2.0 / (cfg.slow + 1)) * (v - st.slow))
    slow = torch.where(moving | first, slow_next, st.slow)
    d = fast - slow
    # The data's own EW average of d d^T (its first reading weighs all), and its weight
    # in readings, capped at the average's span: the prior keeps PRIOR_WEIGHT of them for
    # good, so an old stream's statistic is the one calibration saw in its history.
    n = st.seen.clamp(min=0)
    rate = torch.clamp(1.0 / (n + 1), min=2.0 / (cfg.memory + 1)).view(-1, 1, 1)
    outer = d.unsqueeze(2) * d.unsqueeze(1)
    cov = torch.lerp(st.cov, outer, rate)
    if bool(hold.any()):  # (the common wave has no held stream: skip)
        cov = torch.where(moving.unsqueeze(2), cov, st.cov)
    taken = (st.taken + observed.to(st.taken.dtype)).clamp(max=2.0**24)
    weight = torch.clamp(n + 1, max=(cfg.memory + 1) / 2)
    z = standardised_residuals(cov, weight, d, prior)
    return ShiftState(fast, slow, cov, taken, st.seen + 1), z


def standardised_residuals(cov: Tensor, weight: Tensor, d: Tensor, prior: Tensor) -> Tensor:
    """``(P d)_f / sqrt(P_ff)`` (B, F) with ``P`` the inverse of the covariance: ``cov``
    (B, F, F), the data's average over ``weight`` (B,) readings, pooled with ``PRIOR_WEIGHT``
    readings of ``diag(prior)``, its diagonal ridged and floored (see the module's notes)."""
    share = (weight / (weight + PRIOR_WEIGHT)).view(-1, 1)  # the data's share of the pool
    on_diag = (1 - share) * prior  # the prior's part, only on the diagonal
    diag = share * torch.diagonal(cov, dim1=1, dim2=2) + on_diag
    lift = RIDGE * diag + FLOOR * prior
    pooled = share.unsqueeze(2) * cov + torch.diag_embed(on_diag + lift)  # one (B, F, F) add
    if pooled.shape[1] < CHOLESKY_FROM:
        p: Tensor = torch.linalg.inv_ex(pooled)[0]
        pd = (p @ d.unsqueeze(2)).squeeze(2)
        return pd / torch.diagonal(p, dim1=1, dim2=2).clamp(min=1e-30).sqrt()
    # P = W^T W with W = L^-1, L the Cholesky factor (``pooled`` is symmetric positive
    # definite: an average of outer products, its diagonal lifted).
    low = torch.linalg.cholesky_ex(pooled)[0]
    eye = torch.eye(low.shape[1], dtype=low.dtype, device=low.device).expand_as(low)
    w: Tensor = torch.linalg.solve_triangular(low, eye, upper=False)
    pd = (w.transpose(1, 2) @ (w @ d.unsqueeze(2))).squeeze(2)
    return pd / w.square().sum(dim=1).clamp(min=1e-30).sqrt()


class ShiftRule:
    """Some channel's level ``threshold x scale_f`` spreads away from where the others put it."""

    name, kind = "shift", Kind.TREND
    columns: tuple[str, ...] = ("shift_fast", "shift_slow", "shift_cov", "shift_taken")
    needs_values = False

    def __init__(
        self,
        cfg: ShiftConfig,
        warmup: int,
        protect_max: int,
        device: torch.device,
        skip: tuple[int, ...] = (),
    ) -> None:
        self.cfg, self.warmup, self.protect_max = cfg, warmup, protect_max
        self._prior = torch.tensor(cfg.prior, dtype=torch.float32, device=device)
        self._limits = cfg.limits(device)
        # Channels this rule never reads (held ones: a level known every tenth reading
        # moves nothing the fast level, ~``fast`` readings, could follow).
        use = torch.ones(len(cfg.prior), dtype=torch.bool)
        use[list(skip)] = False
        self._use = None if not skip else use.to(device)

    def step(self, wave: Wave) -> RuleVerdict:
        row, f = wave.row, wave.x.shape[1]
        cov = row.shift_cov.reshape(-1, f, f)
        hold = (row.run > 0) & (row.run <= self.protect_max)
        st = ShiftState(row.shift_fast, row.shift_slow, cov, row.shift_taken, row.age)
        observed = wave.observed if self._use is None else wave.observed & self._use
        nxt, z = shift_step(st, wave.x, observed, hold, self.cfg, self._prior)
        ready = row.age >= self.warmup + self.cfg.slow
        hit = ready & (z.abs() >= self._limits).any(dim=1)
        state = {
            "shift_fast": nxt.fast,
            "shift_slow": nxt.slow,
            "shift_cov": nxt.cov.reshape(-1, f * f),
            "shift_taken": nxt.taken,
        }
        return RuleVerdict(self.name, self.kind, hit, state)
