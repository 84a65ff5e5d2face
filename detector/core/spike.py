"""The spike rule: a value that jumps and comes back — a spike, a burst of noise.

The model is fed the jump, so the reading after it errs the other way as the value
returns: a pair of opposite-signed (whitened) errors on one channel in consecutive
readings, the smaller of the two at ``threshold`` or beyond, flags the second reading. A
cycle's edge or a level shift is a step that stays (one large error, then small ones), and
clean data rarely makes such a pair, so this threshold sits well below what one reading's
error must reach where a cycle's steps set the peak rule's (docs/quality.md, session 16: on
a square duty cycle the peak threshold was 10.5 and this one 3.8). The trainer calibrates the
threshold with the budget, as the other rules', and each feature's ``scale`` as the peak
rule's (:mod:`detector.core.peak`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from detector.core.rules import Kind, RuleVerdict, ThresholdConfig, Wave

__all__ = ["SpikeConfig", "SpikeRule", "spike_pairs"]


class SpikeConfig(ThresholdConfig):
    """The spike rule: ``threshold`` on the smaller of two opposite-signed errors of one
    feature on consecutive readings, over the feature's ``scale`` (0: not calibrated, off)."""

    rule = "spike"


def spike_pairs(errors: Tensor, e_prev: Tensor) -> Tensor:
    """(B, F) per reading and feature, min(|e|, |e_prev|) where the two (whitened) errors
    have opposite signs, else 0; the rule's statistic is their largest over ``scale``. The
    one definition: the engine judges on it, the trainer calibrates on it. Missing values
    are 0 and pair with nothing."""
    opposite = errors * e_prev < 0
    pair = torch.minimum(errors.abs(), e_prev.abs())
    return torch.where(opposite, pair, torch.zeros_like(pair))


class SpikeRule:
    """A jump and its return: see :func:`spike_pairs`. A trend, not a wrong reading: the
    flagged reading is the return, which is fed as it is."""

    name, kind = "spike", Kind.TREND
    columns: tuple[str, ...] = ("e_prev",)
    needs_values = False

    def __init__(self, cfg: SpikeConfig, features: int, device: torch.device) -> None:
        self.cfg = cfg
        self._limits = cfg.limits(features, device)

    def step(self, wave: Wave) -> RuleVerdict:
        # Whitening mixes channels, so a missing value's error is not 0 in wave.errors:
        # masked here, as the trainer's statistic masks it (and the peak rule does).
        e = torch.where(wave.observed, wave.errors, torch.zeros_like(wave.errors))
        hit = (spike_pairs(e, wave.row.e_prev) >= self._limits).any(dim=1)
        return RuleVerdict(self.name, self.kind, hit, {"e_prev": e})
