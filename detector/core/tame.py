"""Channels with a heavy right tail, read through a pseudo-log.

Server and network metrics (request rates, latencies, bytes written) are positive with a
heavy right tail: a lognormal rate with half its values under 7 reaches 300 once in 10,000
readings, 18 of its standard deviations. Every rule measures in units of a channel's
spread and takes the largest over a stream's channels, so such a channel's ordinary
extremes set every rule's threshold for the *other* channels: on a simulated daily fleet
with four lognormal rates beside its four channels the error threshold went from ~6 to 20,
the difference rule's from ~5 to 32, and recall from 0.94 to 0.28 (docs/quality.md,
session 32).

Read through ``asinh((v - m) / c)`` (``m`` the channel's typical value, ``c`` its typical
spread, both robust, from the history), values within a spread or so of ``m`` stay nearly
linear and the tail becomes a logarithm's (a value 100 spreads out reads as ``log 200``);
a value below ``m``, 0 or negative, stays defined (a logarithm would turn 0 into a
missing value). The model, the scaler and every rule then work in those units; the engine
reports its expectation back in the reading's. The trainer picks the channels
(:mod:`training.tame`) and records the centres and scales in
:attr:`detector.core.scoring.ScoringConfig.pseudo_log`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

__all__ = ["PseudoLog", "pseudo_log", "tame_of"]


@dataclass(frozen=True)
class PseudoLog:
    """(F,) each: ``on`` bool, ``center`` and ``scale`` (0 and 1 where off)."""

    on: Tensor
    center: Tensor
    scale: Tensor

    def forward(self, v: Tensor) -> Tensor:
        """(B, F) raw values -> the units the model reads (nan stays nan)."""
        return torch.where(self.on, torch.asinh((v - self.center) / self.scale), v)

    def inverse(self, y: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """(B, F) values in the model's units -> raw units."""
        on, m, c = (t.cpu().numpy() for t in (self.on, self.center, self.scale))
        return np.where(on, m + c * np.sinh(y), y).astype(np.float32)


def tame_of(center: Tensor, scale: Tensor) -> PseudoLog:
    """The transform of per-feature ``center`` and ``scale`` (0: the feature as it came)."""
    on = scale > 0
    zero, one = torch.zeros_like(scale), torch.ones_like(scale)
    return PseudoLog(on, torch.where(on, center, zero), torch.where(on, scale, one))


def pseudo_log(
    values: npt.NDArray[np.floating], parts: tuple[float, ...]
) -> npt.NDArray[np.float32]:
    """(T, F) raw values of one stream in the units the engine reads them through
    ``parts`` (F centres, then F scales: ScoringConfig.pseudo_log), float32 as there."""
    v = np.asarray(values, np.float32)
    f = v.shape[1]
    if len(parts) != 2 * f or not any(parts[f:]):
        return v
    m, c = np.asarray(parts[:f], np.float32), np.asarray(parts[f:], np.float32)
    on = c > 0
    out = v.copy()
    out[:, on] = np.arcsinh((v[:, on] - m[on]) / c[on])
    return out
