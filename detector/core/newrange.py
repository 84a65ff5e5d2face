"""The ``new_range`` rule: a level never seen is news whatever the model expected.

A reading with a feature more than ``margin`` x (the feature's range so far) beyond every
value the stream has shown — once it has shown ``after`` of them — is alerted, at most once
per ``cooldown`` readings (HTM calls it a spatial anomaly). It and the error alerts say
different things and do not silence each other. Ranges are kept in raw units, so a refit's
new scaler does not move what a stream has shown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from detector.core.rules import Kind, RuleVerdict, Wave

__all__ = ["RangeConfig", "RangeRule"]


@dataclass(frozen=True)
class RangeConfig:
    """New territory: ``margin`` x the range beyond it, once ``after`` values were seen."""

    margin: float
    after: int = 0
    cooldown: int = 0  # readings after its alert in which it raises none

    def __post_init__(self) -> None:
        if not self.margin > 0 or self.after < 0 or self.cooldown < 0:
            raise ValueError(
                "new_range.margin > 0, new_range.after >= 0 and new_range.cooldown >= 0 "
                f"needed, got {self.margin}, {self.after}, {self.cooldown}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RangeConfig:
        return cls(float(d["margin"]), int(d.get("after", 0)), int(d.get("cooldown", 0)))


class RangeRule:
    """A value beyond ``margin`` x the range of every value seen, under its own cooldown."""

    name, kind = "new_range", Kind.ALERT
    columns: tuple[str, ...] = ("lo", "hi", "seen", "range_quiet")
    needs_values = True

    def __init__(self, cfg: RangeConfig) -> None:
        self.cfg = cfg

    def step(self, wave: Wave) -> RuleVerdict:
        # Raw units: a refit's new scaler must not move the ranges a stream has shown.
        assert wave.values is not None, "the new_range rule needs the raw values"
        row, v, observed, cfg = wave.row, wave.values, wave.observed, self.cfg
        lo, hi, seen = row.lo, row.hi, row.seen
        span = (hi - lo) * cfg.margin
        known = observed & (seen > 0) & (seen >= cfg.after)
        beyond = (known & ((v > hi + span) | (v < lo - span))).any(dim=1)
        first = seen <= 0
        quiet = row.range_quiet
        fire = beyond & observed.any(dim=1) & (quiet <= 0)
        state = {
            "lo": torch.where(observed, torch.where(first, v, torch.minimum(lo, v)), lo),
            "hi": torch.where(observed, torch.where(first, v, torch.maximum(hi, v)), hi),
            "seen": torch.where(observed, (seen + 1).clamp(max=2.0**24), seen),
            "range_quiet": torch.where(fire, float(cfg.cooldown), (quiet - 1).clamp(min=0)),
        }
        return RuleVerdict(self.name, self.kind, fire, state)
