"""The spike rule: a value that jumps and comes back — a spike, a burst of noise.

The model is fed the jump, so the reading after it errs the other way as the value
returns: a pair of opposite-signed (whitened) errors on one channel in consecutive
readings, the smaller of the two at ``threshold`` or beyond, flags the second reading. A
cycle's edge or a level shift is a step that stays (one large error, then small ones), and
clean data rarely makes such a pair, so this threshold sits well below what one reading's
error must reach where a cycle's steps set the peak rule's (docs/quality.md, session 16: on
a square duty cycle the peak threshold was 10.5 and this one 3.8). The trainer calibrates the
threshold with the budget, as the other rules'.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from detector.core.rules import Kind, RuleVerdict, Wave

__all__ = ["SpikeConfig", "SpikeRule", "spike_pairs"]


@dataclass(frozen=True)
class SpikeConfig:
    """The spike rule: ``threshold`` on the smaller of two opposite-signed errors of one
    feature on consecutive readings (0: not calibrated, off)."""

    threshold: float = 0.0

    def __post_init__(self) -> None:
        if not self.threshold >= 0:
            raise ValueError(f"spike.threshold must be >= 0, got {self.threshold}")

    def ready(self) -> bool:
        return self.threshold > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpikeConfig:
        return cls(float(d.get("threshold", 0.0)))


def spike_pairs(errors: Tensor, e_prev: Tensor) -> Tensor:
    """(B,) per reading, the largest over features of min(|e|, |e_prev|) where the two
    (whitened) errors have opposite signs, else 0. The one definition: the engine judges
    on it, the trainer calibrates on it. Missing values are 0 and pair with nothing."""
    opposite = errors * e_prev < 0
    pair = torch.minimum(errors.abs(), e_prev.abs())
    return torch.where(opposite, pair, torch.zeros_like(pair)).amax(dim=1)


class SpikeRule:
    """A jump and its return: see :func:`spike_pairs`. A trend, not a wrong reading: the
    flagged reading is the return, which is fed as it is."""

    name, kind = "spike", Kind.TREND
    columns: tuple[str, ...] = ("e_prev",)
    needs_values = False

    def __init__(self, cfg: SpikeConfig) -> None:
        self.cfg = cfg

    def step(self, wave: Wave) -> RuleVerdict:
        hit = spike_pairs(wave.errors, wave.row.e_prev) >= self.cfg.threshold
        return RuleVerdict(self.name, self.kind, hit, {"e_prev": wave.errors})
