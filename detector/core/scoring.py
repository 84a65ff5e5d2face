"""From reconstruction errors to anomaly decisions, vectorised over a batch of streams.

For reading t of a stream the model expects ``x̂_t`` (from the state before t). In scaler
units the per-feature error is ``e = x - x̂``; missing features are masked out. The raw
error is the RMS of ``e`` over observed features. Each stream keeps running statistics of
its raw error (an exponentially weighted mean and variance over ``window`` readings),
shrunk toward the training population's (``error_mean``, ``error_std``) while the stream
is young — so a new stream is scored sensibly from its first reading and a noisy stream
is judged against its own noise. The score is the raw error's z-value under those
statistics, the likelihood its normal CDF in [0, 1], and a reading is anomalous when its
stream is past warm-up and the score reaches the calibrated ``threshold``
(:class:`ErrorScore`).

Optional rules catch what the error misses — a stuck sensor (``flatline``), a sustained
deviation (``sustained``), new territory (``new_range``): see :mod:`detector.core.rules`; a
channel's level leaving the stream's other channels (``shift``) or, given them, its own course
(``level``): :mod:`detector.core.shift`, :mod:`detector.core.level`. Each is a part of
:class:`ScoringConfig`, ``None`` when off; the engine builds the active rules once per model
(:func:`build_rules`) and :func:`detector.core.judge.judge` runs them on every wave.

Two options serve alert consumers that rank and de-duplicate alerts (both off by default):

- ``average`` > 1 scores the *short-term average* of the raw error (exponentially weighted,
  the centre of mass of a ``average``-reading moving average) instead of each reading's:
  one surprising reading is common in noisy data, a run of them is what an operator calls
  an anomaly (the anomaly likelihood of HTM, Ahmad et al. 2017). The running statistics
  then track the average, so the score is its z-value under the average's own history.
- ``cooldown`` > 0: after an alert, the stream's next ``cooldown`` readings raise no alert
  (one incident, one alert). They are still judged and, when over the threshold, protected
  and counted in the run of anomalies; only ``anomalous`` (what is alerted) is withheld.

The likelihood is the normal CDF of the score while the upper tail is at least ``1e-4``;
beyond that it is ``1 - 1e-4 · ln(1e-4) / ln Q(score)``, continuous and still rising, so
that float32 keeps ranking alerts far into the tail (``Φ(z)`` itself is exactly 1.0 in
float32 for every z above ~5.4): z = 10 and 11 give 0.999983 and 0.999985, z = 50 still
differs from z = 40.

The statistics each stream keeps are named in :mod:`detector.core.statsrow`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from detector.core.difference import DifferenceConfig, DifferenceRule
from detector.core.incidents import IncidentConfig
from detector.core.level import LevelConfig, LevelRule
from detector.core.newrange import RangeConfig, RangeRule
from detector.core.oldfields import flat_rules
from detector.core.peak import PeakConfig, PeakRule
from detector.core.rules import (
    FlatlineConfig,
    FlatlineRule,
    Kind,
    Rule,
    RuleVerdict,
    SustainConfig,
    SustainRule,
    Wave,
)
from detector.core.shift import ShiftConfig, ShiftRule
from detector.core.sizes import check as check_sizes
from detector.core.spike import SpikeConfig, SpikeRule
from detector.core.statsrow import LAYOUT

__all__ = [
    "ErrorScore",
    "Scaler",
    "ScoringConfig",
    "build_rules",
    "feature_errors",
    "likelihood_of",
]

_SQRT2 = math.sqrt(2.0)
_KNEE = 1e-4  # upper tail below which the likelihood switches to its log-scale form
_LOG_KNEE = math.log(_KNEE)
_RULES: dict[
    str,
    type[FlatlineConfig]
    | type[SustainConfig]
    | type[RangeConfig]
    | type[PeakConfig]
    | type[ShiftConfig]
    | type[LevelConfig]
    | type[SpikeConfig]
    | type[DifferenceConfig]
    | type[IncidentConfig],
] = {
    "flatline": FlatlineConfig,
    "peak": PeakConfig,
    "shift": ShiftConfig,
    "level": LevelConfig,
    "spike": SpikeConfig,
    "difference": DifferenceConfig,
    "sustained": SustainConfig,
    "new_range": RangeConfig,
    "incidents": IncidentConfig,
}


@dataclass(frozen=True)
class ScoringConfig:
    """How errors become decisions. ``threshold`` and the error prior come from training.

    >>> from detector.core.newrange import RangeConfig
    >>> cfg = ScoringConfig(new_range=RangeConfig(margin=0.1, cooldown=150))
    >>> ScoringConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    threshold: float = 4.0  # on the score (z-value of the raw error)
    error_mean: float = 1.0  # training population's raw-error mean, scaler units
    error_std: float = 0.5  # and its standard deviation
    warmup: int = 10  # readings after a (re)start before any decision
    window: int = 1000  # horizon of the running statistics, readings
    prior_weight: float = 100.0  # pseudo-readings of the training prior in the statistics
    std_floor: float = 0.05  # floor on the error std, as a fraction of error_std
    protect_state: bool = True  # feed the expectation, not the anomalous reading
    protect_max: int = 30  # ... for at most this many anomalies in a row (a new regime)
    # Whitening of the per-feature errors, an F x F matrix flattened row-major (empty: the
    # identity). Calibrated from held-out residuals as Σ^-1/2, it makes the raw error a
    # Mahalanobis distance: channels that normally err together (a shared, unpredictable
    # load) stop hiding a channel that breaks from them.
    whiten: tuple[float, ...] = ()
    average: int = 1  # readings in the short-term average that is scored (1: each reading)
    cooldown: int = 0  # readings after an error alert that raise no further one (0: off)
    # Each stream's whitened errors in units of its own spread of them, pooled with the
    # fleet's (detector.core.spread): every rule then judges a stream against its own
    # noise. Off in models before it.
    own_scale: bool = False
    # The optional rules (detector.core.rules); None: off.
    flatline: FlatlineConfig | None = None
    sustained: SustainConfig | None = None
    new_range: RangeConfig | None = None
    peak: PeakConfig | None = None
    shift: ShiftConfig | None = None
    level: LevelConfig | None = None
    spike: SpikeConfig | None = None
    difference: DifferenceConfig | None = None
    # Alerts as incidents (detector.core.incidents): one open, one resolved per deviation.
    # None: one alert per anomalous reading (the cooldowns still apply).
    incidents: IncidentConfig | None = field(default_factory=IncidentConfig)
    # Context channels (feature indices): the model reads them, no rule judges them. The
    # trainer names a channel that barely moves in its history (a command, a flag, a mode:
    # training.context): its rare switches are events, not noise, and judged they set
    # every rule's threshold for the other channels (docs/quality.md, session 31).
    context: tuple[int, ...] = ()
    # Held channels (feature indices): sensors polled faster than they update. A reading
    # that repeats the channel's last given value exactly is read by the model and judged
    # by no rule but the flatline rule (detector.core.held; docs/quality.md, session 32).
    held: tuple[int, ...] = ()
    # A pseudo-log the engine reads raw values through, asinh((v - m) / c): per feature the
    # centre m, then per feature the scale c (2F values; c = 0: the feature as it came;
    # empty: none). The trainer sets it for a channel with a heavy right tail
    # (training.tame; docs/quality.md, session 32).
    pseudo_log: tuple[float, ...] = ()
    # Each stream read at the fleet's size, per feature the fleet's typical level, then its
    # typical step (0: as it came; empty: none). The trainer sets it where streams' sizes
    # spread over the fleet (training.sizes; detector.core.sizes).
    sizes: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.error_std <= 0 or self.window < 1 or self.prior_weight < 0:
            raise ValueError(f"error_std > 0, window >= 1, prior_weight >= 0 needed: {self}")
        if self.average < 1 or self.cooldown < 0:
            raise ValueError(
                f"average >= 1 and cooldown >= 0 needed, got {self.average}, {self.cooldown}"
            )
        n = math.isqrt(len(self.whiten))
        if n * n != len(self.whiten) or not all(math.isfinite(v) for v in self.whiten):
            raise ValueError("whiten must be a finite square matrix flattened row-major")
        if list(self.context) != sorted(set(self.context)) or any(i < 0 for i in self.context):
            raise ValueError(
                f"context must be distinct feature indices in order, got {self.context}"
            )
        if list(self.held) != sorted(set(self.held)) or any(i < 0 for i in self.held):
            raise ValueError(f"held must be distinct feature indices in order, got {self.held}")
        half = len(self.pseudo_log) // 2
        if (
            len(self.pseudo_log) % 2
            or not all(math.isfinite(v) for v in self.pseudo_log)
            or any(v < 0 for v in self.pseudo_log[half:])
        ):
            raise ValueError(
                "pseudo_log must be F finite centres, then F finite scales >= 0, got "
                f"{self.pseudo_log}"
            )
        check_sizes(self.sizes, (len(self.sizes) + 1) // 2)  # an odd count is refused
        if set(self.held) & set(self.context):
            raise ValueError(f"held {self.held} and context {self.context} must not overlap")

    def whiten_matrix(self, features: int) -> Tensor | None:
        """The whitening matrix (F, F), or None for the identity."""
        if not self.whiten:
            return None
        if len(self.whiten) != features * features:
            raise ValueError(
                f"whiten is {math.isqrt(len(self.whiten))}x.. but the model has {features} features"
            )
        return torch.tensor(self.whiten, dtype=torch.float32).reshape(features, features)

    def judged_mask(self, features: int) -> Tensor | None:
        """(F,) bool, False at the context channels; None when every channel is judged."""
        if not self.context:
            return None
        if self.context[-1] >= features or len(self.context) >= features:
            raise ValueError(
                f"context {self.context} must leave a judged channel of the model's {features}"
            )
        mask = torch.ones(features, dtype=torch.bool)
        mask[list(self.context)] = False
        return mask

    @property
    def reads_pseudo_log(self) -> bool:
        """Whether some feature is read through the pseudo-log."""
        return any(self.pseudo_log[len(self.pseudo_log) // 2 :])

    def pseudo_log_parts(self, features: int) -> tuple[float, ...] | None:
        """The pseudo-log (F centres, then F scales; scale 0: as it came) checked against
        ``features``; None when no feature is read through it."""
        if not self.reads_pseudo_log:
            return None
        if len(self.pseudo_log) != 2 * features:
            raise ValueError(
                f"pseudo_log has {len(self.pseudo_log)} values but the model's {features} "
                f"features need {2 * features}"
            )
        return self.pseudo_log

    def held_mask(self, features: int) -> Tensor | None:
        """(F,) bool, True at the held channels; None when there are none."""
        if not self.held:
            return None
        if self.held[-1] >= features:
            raise ValueError(f"held {self.held} names no channel of the model's {features}")
        mask = torch.zeros(features, dtype=torch.bool)
        mask[list(self.held)] = True
        return mask

    def sustains(self, features: int) -> bool:
        """Whether the sustained rule is on (and calibrated) for ``features`` features."""
        return self.sustained is not None and self.sustained.ready(features)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in _RULES}
        d["whiten"] = list(self.whiten)
        for key in _RULES:
            sub = getattr(self, key)
            d[key] = None if sub is None else sub.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScoringConfig:
        """The config of ``to_dict``; also reads the flat rule fields of older manifests."""
        known = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in known}
        if "whiten" in kw:
            kw["whiten"] = tuple(float(v) for v in kw["whiten"])
        for key in ("context", "held"):
            if key in kw:
                kw[key] = tuple(int(v) for v in kw[key])
        for key in ("pseudo_log", "sizes"):
            if key in kw:
                kw[key] = tuple(float(v) for v in kw[key])
        for f in fields(cls):  # JSON's 10.0 is the count 10 (a whole number, as the rules')
            v = kw.get(f.name)
            if f.type == "int" and isinstance(v, float) and v.is_integer():
                kw[f.name] = int(v)
        for key in _RULES:
            if kw.get(key) is not None:
                kw[key] = _RULES[key].from_dict(kw[key])
        kw.update(flat_rules(d, kw))
        return cls(**kw)


@dataclass(frozen=True)
class Scaler:
    """Per-feature affine scaling to the model's units: ``(raw - mean) / std``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError("scaler mean and std must have one entry per feature")
        if any(not s > 0 for s in self.std):
            raise ValueError(f"scaler std must be positive, got {self.std}")


def feature_errors(
    x: Tensor, x_hat: Tensor, whiten: Tensor | None = None, judged: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-feature errors (B, F), raw RMS error (B,), observed mask (B, F).

    Errors are ``x - x̂`` in scaler units, 0 where missing (nan), then whitened by
    ``whiten`` (F, F) when given; the raw error is their RMS over the observed features.
    ``judged`` (F,) bool: the errors of the other (context) channels stay 0 after the
    whitening as before it, whatever its rows for them hold.
    """
    observed = ~torch.isnan(x)
    err = torch.where(observed, x - x_hat, torch.zeros_like(x))
    if whiten is not None:
        err = err @ whiten.T  # (B, F)
        if judged is not None:
            err = torch.where(judged, err, 0.0)
    n_obs = observed.sum(dim=1)
    raw = torch.sqrt((err * err).sum(dim=1) / n_obs.clamp(min=1))
    return err, raw, observed


def likelihood_of(score: Tensor) -> Tensor:
    """Likelihood in [0, 1] of scores (any shape): ``Φ(z)``, with a log-scale upper tail.

    >>> likelihood_of(torch.tensor([0.0, 4.0, 10.0, 11.0])).tolist()  # doctest: +ELLIPSIS
    [0.5, 0.99991..., 0.99998..., 0.99998...]
    """
    log_q = torch.special.log_ndtr(-score)  # ln Q(z), exact far into the tail
    body = 0.5 * (1 + torch.erf(score / _SQRT2))
    tail = 1 - _KNEE * _LOG_KNEE / log_q.clamp(max=_LOG_KNEE)
    return torch.where(log_q >= _LOG_KNEE, body, tail)


class ErrorScore:
    """The raw error's z-value under the stream's statistics; flags it at ``threshold``."""

    name, kind = "error", Kind.READING
    columns: tuple[str, ...] = ("count", "mean", "var", "avg")
    needs_values = False

    def __init__(self, cfg: ScoringConfig) -> None:
        self.cfg = cfg

    def step(self, wave: Wave) -> RuleVerdict:
        cfg, row, raw = self.cfg, wave.row, wave.raw
        n = row.count
        any_obs = wave.observed.any(dim=1)
        if cfg.average > 1:  # EW average; a plain mean over its first readings after a restart
            rate = torch.clamp(1.0 / (row.age + 1), min=2.0 / (cfg.average + 1))
            avg = torch.where(any_obs, row.avg + rate * (raw - row.avg), row.avg)
        else:
            avg = raw
        w = n / (n + cfg.prior_weight) if cfg.prior_weight > 0 else torch.ones_like(n)
        mean = w * row.mean + (1 - w) * cfg.error_mean
        var = w * row.var + (1 - w) * cfg.error_std**2
        std = torch.sqrt(var).clamp(min=cfg.std_floor * cfg.error_std)
        score = (avg - mean) / std
        # Winsorise what enters the statistics, so an anomaly does not teach the stream that
        # anomalies are normal (the cap stays above the mean whatever the threshold);
        # readings with nothing observed teach nothing.
        clipped = torch.minimum(avg, mean + max(cfg.threshold, 1.0) * std)
        n2 = torch.where(any_obs, (n + 1).clamp(max=cfg.window), n)
        alpha = torch.where(any_obs, 1.0 / n2.clamp(min=1), torch.zeros_like(n))
        delta = clipped - row.mean
        state = {
            "count": n2,
            "mean": row.mean + alpha * delta,
            "var": (1 - alpha) * (row.var + alpha * delta * delta),
            "avg": avg,
        }
        return RuleVerdict(self.name, self.kind, score >= cfg.threshold, state, score)


def build_rules(cfg: ScoringConfig, features: int, device: torch.device) -> list[Rule]:
    """The error score and the rules ``cfg`` turns on, ready for ``features`` features."""
    rules: list[Rule] = [ErrorScore(cfg)]
    if cfg.flatline is not None:
        rules.append(FlatlineRule(cfg.flatline, features, device))
    if cfg.sustained is not None and cfg.sustains(features):
        rules.append(SustainRule(cfg.sustained, cfg.warmup, device))
    if cfg.new_range is not None:
        rules.append(RangeRule(cfg.new_range))
    if cfg.peak is not None and cfg.peak.ready():
        rules.append(PeakRule(cfg.peak, features, device))
    if cfg.shift is not None and cfg.shift.ready(features):
        rules.append(ShiftRule(cfg.shift, cfg.warmup, cfg.protect_max, device, cfg.held))
    if cfg.level is not None and cfg.level.ready(features):
        on = cfg.incidents is not None  # the record of its own flags (LevelRule)
        rules.append(LevelRule(cfg.level, cfg.warmup, cfg.protect_max, device, cfg.held, on))
    if cfg.spike is not None and cfg.spike.ready():
        rules.append(SpikeRule(cfg.spike, features, device))
    if cfg.difference is not None and cfg.difference.ready(features):
        rules.append(DifferenceRule(cfg.difference, device))
    owned = [c for r in rules for c in r.columns] + list(_JUDGE_COLUMNS)
    if len(owned) != len(set(owned)):
        raise ValueError(f"two rules write the same statistics: {sorted(owned)}")
    for c in owned:
        LAYOUT.at(c)  # a KeyError names a column the row does not have
    return rules


_JUDGE_COLUMNS = ("run", "age", "quiet", "calm")
