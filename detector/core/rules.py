"""Detection rules: small units with one signature, ``step(wave) -> RuleVerdict``.

The error score (:class:`detector.core.scoring.ErrorScore`) judges each reading by how
surprised the model was. The optional rules here catch what that score misses; each is
configured by its own part of :class:`~detector.core.scoring.ScoringConfig` (``None``: off)
and keeps its own columns of the statistics row (:mod:`detector.core.statsrow`):

- ``flatline`` (:class:`FlatlineRule`): a stuck sensor repeats one value while its channel
  would move; its one-step error is no larger than usual. A reading is flagged when a
  feature has repeated its exact value ``stuck_after[f]`` times in a row (0: never for that
  feature, as for a quantised channel that repeats normally; the trainer calibrates it).
- ``sustained`` (:class:`SustainRule`): a level shift, a drift, a channel that stopped
  following the others is often within one reading's noise at every reading: it is the
  persistence of the error's sign that is news. Each feature's whitened error (clipped at
  ``SUSTAIN_CLIP``) is averaged over ~``span`` readings (exponentially weighted, from the
  end of warm-up); a reading is flagged when some feature's average reaches ``threshold``
  times that feature's ``scale`` (the average's spread on clean held-out data; the trainer
  calibrates both). With ``own`` (the trainer's default), a stream's averages are judged
  against its own spread of them instead — their mean square over its last
  ``SUSTAIN_MEMORY`` readings, pooled with ``scale`` as ``SUSTAIN_PRIOR`` readings — so a
  stream the model always misjudges one way does not fire again and again, and a quiet one
  fires on less (docs/quality.md, session 11).
  It starts no alert within ``SUSTAIN_HOLD`` spans of the stream's last
  anomalous reading (it may extend a run going on): an incident's aftermath — the average's
  memory of it, the state finding its way back — is not a new incident.
- ``peak`` (:class:`detector.core.peak.PeakRule`): a reading whose largest per-feature
  (whitened) error reaches ``threshold`` (times the feature's ``scale``). The error score
  is the RMS over the features: a deviation on one channel of many is diluted there (by
  sqrt F) and not here.
- ``spike`` (:class:`detector.core.spike.SpikeRule`, a module of its own as the shift
  rule's): a value that jumps and comes back, two opposite-signed errors in a row.
- ``difference`` (:class:`detector.core.difference.DifferenceRule`): a channel's change,
  over one reading or five, far beyond the stream's own usual changes; no model.
- ``new_range`` (:class:`detector.core.newrange.RangeRule`): a value well beyond every
  value the stream has shown, alerted with likelihood 1 under its own cooldown.

A verdict's :class:`Kind` says how the scorer combines it (see
:func:`detector.core.judge.judge`). A new rule is a new class here with a config, an entry
in ``ScoringConfig`` and :func:`~detector.core.scoring.build_rules`, and — when it keeps
state — a part of :class:`~detector.core.statsrow.StatsRow` (bump ``LAYOUT_VERSION``).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol, Self

import torch
from torch import Tensor

from detector.core.spread import pooled_spread, spread_step
from detector.core.statsrow import StatsRow

__all__ = [
    "SUSTAIN_CLIP",
    "SUSTAIN_HOLD",
    "SUSTAIN_MEMORY",
    "SUSTAIN_PRIOR",
    "FlatlineConfig",
    "FlatlineRule",
    "Kind",
    "Rule",
    "RuleVerdict",
    "SustainConfig",
    "SustainRule",
    "ThresholdConfig",
    "Wave",
    "channel_limits",
    "sustained_average",
    "sustained_spread",
    "sustained_spread_step",
]

SUSTAIN_CLIP = 10.0  # whitened error beyond which a reading adds no more to its average
SUSTAIN_HOLD = 3  # spans after an anomalous reading in which the sustained rule starts none
SUSTAIN_MEMORY = 1000  # readings in a stream's own spread of its averages (``own``)
SUSTAIN_PRIOR = 100.0  # readings' worth of the fleet's scale pooled into that spread


class Kind(enum.Enum):
    """How a rule's flags become decisions."""

    READING = "reading"  # the reading is wrong: alerted like a score over the threshold, fed
    # the expectation (protected), counted in the run of anomalies, under the error cooldown
    TREND = "trend"  # the stream's course is news: alerted and counted like one, but the
    # reading is fed as it is (fed the expectation, the state drifts and the rule feeds itself)
    ALERT = "alert"  # an alert of its own: the rule applied its own cooldown; likelihood 1;
    # no run, no protection, no silencing of the error alerts


@dataclass(frozen=True)
class Wave:
    """What every rule sees of one wave of B readings; (B, F) unless noted."""

    x: Tensor  # readings, scaler units, nan where missing
    values: Tensor | None  # the same in raw units (given when a rule ``needs_values``)
    errors: Tensor  # per-feature (whitened) errors x - x̂, 0 where missing
    raw: Tensor  # (B,) RMS of the errors over observed features
    observed: Tensor  # bool
    row: StatsRow  # each stream's statistics before this reading
    ts_ms: Tensor | None = None  # (B,) int64 the readings' times (incidents record them)
    # The readings before a held channel's repeats were masked (detector.core.held), nan
    # where missing: what the flatline rule counts repeats of. None: ``x``.
    given: Tensor | None = None
    # (B,) bool: streams not judged yet whatever their age (a sized stream whose size is
    # still being measured, detector.core.sizes.measuring). None: every stream by its age.
    unready: Tensor | None = None


@dataclass(frozen=True)
class RuleVerdict:
    """A rule's judgement of one wave: ``flags`` (B,) bool, its columns' next values."""

    name: str
    kind: Kind
    flags: Tensor
    state: Mapping[str, Tensor] = field(default_factory=dict)  # StatsRow part -> next value
    score: Tensor | None = None  # (B,) the error score's z-value (it alone gives one)


class Rule(Protocol):
    """A detection rule: built once per model (on its device), stepped once per wave."""

    @property
    def name(self) -> str:
        """As alerts and incidents name it."""

    @property
    def kind(self) -> Kind: ...

    @property
    def columns(self) -> tuple[str, ...]:
        """The StatsRow parts it alone writes."""

    @property
    def needs_values(self) -> bool:
        """Whether ``Wave.values`` (raw units) must be given."""

    def step(self, wave: Wave) -> RuleVerdict: ...


# -- configs --------------------------------------------------------------------------


@dataclass(frozen=True)
class FlatlineConfig:
    """Per feature: exact repeats in a row that make a sensor stuck (0: never)."""

    stuck_after: tuple[int, ...]

    def __post_init__(self) -> None:
        if any(v < 0 for v in self.stuck_after):
            raise ValueError(f"flatline.stuck_after must be >= 0, got {self.stuck_after}")

    def to_dict(self) -> dict[str, Any]:
        return {"stuck_after": list(self.stuck_after)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FlatlineConfig:
        return cls(tuple(int(v) for v in d["stuck_after"]))


@dataclass(frozen=True)
class SustainConfig:
    """The sustained rule: ``span`` readings per average; ``scale``/``threshold`` calibrated."""

    span: int  # readings in each feature's average of signed errors
    scale: tuple[float, ...] = ()  # per feature, that average's clean spread
    threshold: float = 0.0  # on |average| / scale (0: not calibrated, the rule is off)
    own: bool = False  # judge against each stream's own spread, ``scale`` its prior

    def __post_init__(self) -> None:
        if self.span < 1 or not self.threshold >= 0 or any(not v > 0 for v in self.scale):
            raise ValueError(
                "sustained.span >= 1, sustained.threshold >= 0 and a positive "
                f"sustained.scale needed, got {self.span}, {self.threshold}, {self.scale}"
            )

    def ready(self, features: int) -> bool:
        """Calibrated for ``features`` features."""
        return self.threshold > 0 and len(self.scale) == features

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SustainConfig:
        return cls(
            int(d["span"]),
            tuple(float(v) for v in d.get("scale", ())),
            d.get("threshold", 0.0),
            bool(d.get("own", False)),  # models before it judged against the fleet's scale
        )


def channel_limits(
    threshold: float, scale: tuple[float, ...], channels: int, device: torch.device | None
) -> Tensor:
    """Per channel, the statistic that flags: ``threshold x scale_c`` (C,); ``scale`` () is
    1 for every channel."""
    return torch.tensor(scale or (1.0,) * channels, dtype=torch.float32, device=device) * threshold


@dataclass(frozen=True)
class ThresholdConfig:
    """A rule judged per feature by one calibrated ``threshold`` (0: not calibrated, the rule
    is off) times the feature's ``scale`` (calibrated; (): 1 for every feature). The scale
    gives each feature an equal share of the rule's false alarms where one feature's errors
    have heavier tails than the others' (docs/quality.md, session 34)."""

    threshold: float = 0.0
    scale: tuple[float, ...] = ()
    rule: ClassVar[str] = "rule"  # as errors name it

    def __post_init__(self) -> None:
        if not self.threshold >= 0 or any(not 0 < v < math.inf for v in self.scale):
            raise ValueError(
                f"{self.rule}.threshold >= 0 and a positive, finite {self.rule}.scale needed, got "
                f"{self.threshold}, {self.scale}"
            )

    def ready(self) -> bool:
        return self.threshold > 0

    @property
    def scaled(self) -> bool:
        """Whether some feature is judged at a scale other than 1."""
        return any(v != 1.0 for v in self.scale)

    def limits(self, features: int, device: torch.device | None = None) -> Tensor:
        """Per feature, the value that flags: ``threshold x scale`` (F,)."""
        if self.scale and len(self.scale) != features:
            raise ValueError(
                f"{self.rule}.scale has {len(self.scale)} values but the model has "
                f"{features} features"
            )
        return channel_limits(self.threshold, self.scale, features, device)

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, **({"scale": list(self.scale)} if self.scale else {})}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        return cls(float(d.get("threshold", 0.0)), tuple(float(v) for v in d.get("scale", ())))


# -- the rules ------------------------------------------------------------------------


class FlatlineRule:
    """A feature repeating its exact value ``stuck_after[f]`` times in a row."""

    name, kind = "flatline", Kind.READING
    columns: tuple[str, ...] = ("last_obs", "repeats")
    needs_values = False

    def __init__(self, cfg: FlatlineConfig, features: int, device: torch.device) -> None:
        # (F,), or None: the repeats are counted while no feature is calibrated (yet)
        lim = cfg.stuck_after
        on = any(lim) and len(lim) == features
        self._limit = torch.tensor(lim, dtype=torch.float32, device=device) if on else None

    def step(self, wave: Wave) -> RuleVerdict:
        row, x, observed = wave.row, wave.x, wave.observed
        if wave.given is not None:  # a held channel's repeats are what this rule counts
            x, observed = wave.given, ~torch.isnan(wave.given)
        same = observed & (x == row.last_obs) & (row.age > 0).unsqueeze(1)
        repeats = torch.where(same, row.repeats + 1, torch.where(observed, 0.0, row.repeats))
        last_obs = torch.where(observed, x, row.last_obs)
        if self._limit is None:
            stuck = torch.zeros_like(row.age, dtype=torch.bool)
        else:
            stuck = ((repeats >= self._limit) & (self._limit > 0)).any(dim=1)
        return RuleVerdict(self.name, self.kind, stuck, {"last_obs": last_obs, "repeats": repeats})


def sustained_average(errors: Tensor, observed: Tensor, avg: Tensor, span: int) -> Tensor:
    """Per-feature averages of signed errors (B, F) after one more reading (B, F).

    Errors are clipped at ``SUSTAIN_CLIP``; a missing value leaves its average as it was.
    The one definition of the average: the engine keeps it, the trainer calibrates on it.
    """
    rate = 2.0 / (span + 1)
    e = errors.clamp(-SUSTAIN_CLIP, SUSTAIN_CLIP)
    return torch.where(observed, avg + rate * (e - avg), avg)


def sustained_spread(scale: Tensor, n: Tensor, ms: Tensor) -> Tensor:
    """(B, F) what a stream's averages are judged against with ``own``: its mean square
    ``ms`` (B, F) of them, each feature's over its ``n`` (B, F) readings, pooled with the
    fleet's ``scale`` (F,) as ``SUSTAIN_PRIOR`` readings. The one definition: the engine
    and the trainer use it."""
    return pooled_spread(scale, n, ms, SUSTAIN_PRIOR)


def sustained_spread_step(
    avg: Tensor, spread: Tensor, threshold: float, counted: Tensor, n: Tensor, ms: Tensor
) -> tuple[Tensor, Tensor]:
    """``n`` and ``ms`` after one more reading: each ``counted`` feature's squared average
    enters its mean square, winsorised at ``threshold x spread`` as the error score's
    statistics are (an anomaly teaches the stream little); ``n`` counts the readings with
    it counted, per feature, up to ``SUSTAIN_MEMORY``."""
    return spread_step(avg, spread, max(threshold, 1.0), counted, n, ms, SUSTAIN_MEMORY)


class SustainRule:
    """Some feature's average of signed errors at ``threshold x scale`` or beyond (with
    ``own``: ``threshold x`` the stream's own spread, see :func:`sustained_spread`)."""

    name, kind = "sustained", Kind.TREND
    columns: tuple[str, ...] = ("drift",)
    needs_values = False

    def __init__(self, cfg: SustainConfig, warmup: int, device: torch.device) -> None:
        self.cfg, self.warmup = cfg, warmup
        self._scale = torch.tensor(cfg.scale, dtype=torch.float32, device=device)
        # (F,) the |average| per feature at which the rule fires
        self._limit = self._scale * cfg.threshold
        if cfg.own:
            self.columns = ("drift", "drift_n", "drift_ms")

    def step(self, wave: Wave) -> RuleVerdict:
        # Averaging starts at the end of warm-up (a cold state's first errors are no sign
        # of anything) and decides once it has seen ``span`` readings.
        row, span = wave.row, self.cfg.span
        started = (row.age >= self.warmup).unsqueeze(1) & wave.observed
        drift = sustained_average(wave.errors, started, row.drift, span)
        ready = row.age >= self.warmup + span
        state = {"drift": drift}
        if self.cfg.own:
            spread = sustained_spread(self._scale, row.drift_n, row.drift_ms)
            over = drift.abs() >= spread * self.cfg.threshold
            counted = ready.unsqueeze(1) & started
            state["drift_n"], state["drift_ms"] = sustained_spread_step(
                drift, spread, self.cfg.threshold, counted, row.drift_n, row.drift_ms
            )
        else:
            over = drift.abs() >= self._limit
        hit = ready & over.any(dim=1)
        hit = hit & ((row.calm >= SUSTAIN_HOLD * span) | (row.run > 0))
        return RuleVerdict(self.name, self.kind, hit, state)
