"""One wave's verdict: every rule run, their flags combined into what is alerted, protected
and remembered (:func:`judge`); the rules are built by
:func:`detector.core.scoring.build_rules`, the statistics named in
:mod:`detector.core.statsrow`."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from detector.core.incidents import RULE_NAMES, IncidentStep, incident_step
from detector.core.rules import Kind, Rule, RuleVerdict, Wave
from detector.core.scoring import ScoringConfig, likelihood_of
from detector.core.statsrow import StatsRow

__all__ = ["Judgement", "judge"]


@dataclass(frozen=True)
class Judgement:
    """One wave's decisions; tensors (B,) on the engine's device."""

    score: Tensor  # z-value under the stream's statistics (a rule's flag reads as threshold)
    likelihood: Tensor  # in [0, 1], monotone in the score: see likelihood_of
    anomalous: Tensor  # bool: alerted (an incident opened; without incidents: over the
    # threshold, warm, not in a cooldown)
    protect: Tensor  # bool: feed the expectation instead of the reading
    flags: Mapping[str, Tensor]  # bool, by rule name: what each rule flagged
    row: StatsRow  # the statistics after the reading (``x_prev`` is the engine's to set)
    rules: Tensor  # float bit mask (RULE_NAMES order) of the rules that flagged the reading
    warm: Tensor  # bool: the stream was judged (past its warm-up, not Wave.unready)
    incident: IncidentStep | None = None  # the incidents' events, when they are on


def judge(wave: Wave, rules: Sequence[Rule], cfg: ScoringConfig) -> Judgement:
    """Run ``rules`` (from :func:`build_rules`) on one wave and combine their verdicts."""
    verdicts = [r.step(wave) for r in rules]
    (error,) = [v for v in verdicts if v.score is not None]
    assert error.score is not None
    row, score = wave.row, error.score
    any_obs = wave.observed.any(dim=1)
    aged = row.age >= cfg.warmup
    warm = aged if wave.unready is None else aged & ~wave.unready
    reading, trend = _union(_of(verdicts, Kind.READING, error)), _union(_of(verdicts, Kind.TREND))
    # Protected: readings that are wrong themselves. A trend is a verdict on the course,
    # not on this reading, which is fed as it is.
    own = warm & any_obs & _or(error.flags, reading)
    ruled = _any(reading, trend)  # a rule's flag reads as the threshold: one clamp for all
    hit = _or(error.flags, ruled)
    if ruled is not None:
        score = torch.where(ruled, score.clamp(min=cfg.threshold), score)
    likelihood = likelihood_of(score)
    over = warm & any_obs & hit
    anomalous = over & (row.quiet <= 0)
    zero = torch.zeros_like(row.count)
    run = torch.where(over, row.run + 1, zero)
    calm = torch.where(over, zero, (row.calm + 1).clamp(max=2.0**24))
    protect = own & (run <= cfg.protect_max) if cfg.protect_state else over & False
    quiet = torch.where(anomalous, float(cfg.cooldown), (row.quiet - 1).clamp(min=0))
    flagged = over
    alert = _union(_of(verdicts, Kind.ALERT))  # under its own cooldown, already applied
    if alert is not None:
        anomalous = anomalous | alert
        flagged = flagged | alert
        score = torch.where(alert, score.clamp(min=cfg.threshold), score)
        likelihood = torch.where(alert, torch.ones_like(likelihood), likelihood)
    state = {k: t for v in verdicts for k, t in v.state.items()}
    mask = _rule_mask(verdicts, flagged, warm & any_obs)
    inc = None
    if cfg.incidents is not None:
        if wave.ts_ms is None:
            raise ValueError("incidents need the readings' times (Wave.ts_ms)")
        inc = incident_step(
            row.incident,
            flagged,
            mask,
            score,
            wave.errors,
            # A restarted stream's warm-up (after a gap) neither extends nor resolves its
            # open incident: it resolved one ongoing fault "recovered" and opened a second.
            # (A size measured afresh still resolves: held, a false opening stayed open.)
            any_obs & aged,
            wave.ts_ms,
            cfg.incidents,
            x=wave.x,
            hold=row.incident_hold,
        )
        anomalous = inc.opened
        state["incident"] = inc.block
        if inc.hold is not None:
            state["incident_hold"] = inc.hold
    row2 = replace(row, run=run, age=row.age + 1, quiet=quiet, calm=calm, **state)
    flags = {v.name: v.flags for v in verdicts}
    return Judgement(score, likelihood, anomalous, protect, flags, row2, mask, warm, inc)


def _rule_mask(verdicts: list[RuleVerdict], flagged: Tensor, judged: Tensor) -> Tensor:
    """(B,) float bit mask of the rules that flagged each flagged reading (an alert rule's
    flag counts unjudged: it keeps its own warm-up). All rules at once: a few tensor
    operations a wave, not four a rule (a wave of few streams is per-operation overhead).
    The bits are distinct powers of two, so their float sum is exact in any order."""
    rules = tuple((v.name, v.kind is Kind.ALERT) for v in verdicts)
    bits, unjudged = _rule_bits(rules, flagged.device)  # (R,) each
    flags = torch.stack([v.flags for v in verdicts], dim=1)  # (B, R)
    hit = flags & flagged.unsqueeze(1) & (judged.unsqueeze(1) | unjudged)
    return (hit * bits).sum(dim=1)


@functools.lru_cache(maxsize=64)
def _rule_bits(rules: tuple[tuple[str, bool], ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """The rules' bits (R,) float32 and which are alert rules (R,) bool, on ``device``."""
    bits = [float(1 << RULE_NAMES.index(name)) for name, _ in rules]
    alert = [is_alert for _, is_alert in rules]
    return (
        torch.tensor(bits, dtype=torch.float32, device=device),
        torch.tensor(alert, dtype=torch.bool, device=device),
    )


def _union(verdicts: list[RuleVerdict]) -> Tensor | None:
    """Where any of ``verdicts`` flagged (None: there are none)."""
    return _any(*(v.flags for v in verdicts))


def _or(flags: Tensor, more: Tensor | None) -> Tensor:
    return flags if more is None else flags | more


def _any(*flags: Tensor | None) -> Tensor | None:
    """The elementwise OR of the ``flags`` given (None ones skipped; None if none is)."""
    given = [f for f in flags if f is not None]
    return functools.reduce(torch.logical_or, given) if given else None


def _of(
    verdicts: list[RuleVerdict], kind: Kind, skip: RuleVerdict | None = None
) -> list[RuleVerdict]:
    return [v for v in verdicts if v.kind is kind and v is not skip]
