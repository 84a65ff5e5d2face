"""The peak rule: a reading whose largest per-feature (whitened) error reaches ``threshold``
times that feature's ``scale``.

The error score is the RMS over the features: a deviation on one channel of many is diluted
there (by sqrt F) and not here. ``scale`` (calibrated by the trainer's budget; 1 for every
feature when absent) is each feature's clean tail at the rule's rate over the least one's: a
channel whose errors have heavier tails than the others' would otherwise set the one
threshold for all (docs/quality.md, session 34).
"""

from __future__ import annotations

import torch

from detector.core.rules import Kind, RuleVerdict, ThresholdConfig, Wave

__all__ = ["PeakConfig", "PeakRule"]


class PeakConfig(ThresholdConfig):
    """The peak rule: ``threshold`` on each feature's error over its ``scale`` (0: not
    calibrated, off)."""

    rule = "peak"


class PeakRule:
    """A reading whose error on some feature reaches ``threshold x scale`` of it."""

    name, kind = "peak", Kind.READING
    columns: tuple[str, ...] = ()
    needs_values = False

    def __init__(self, cfg: PeakConfig, features: int, device: torch.device) -> None:
        self.cfg = cfg
        self._limits = cfg.limits(features, device)

    def step(self, wave: Wave) -> RuleVerdict:
        big = (wave.errors.abs() >= self._limits) & wave.observed
        return RuleVerdict(self.name, self.kind, big.any(dim=1))
