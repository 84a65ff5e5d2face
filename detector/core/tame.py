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

__all__ = ["PseudoLog", "pseudo_log", "raw_of", "tame_of"]

F32 = npt.NDArray[np.float32]
LIMIT = 1e30  # of (v - m) / c: beyond it float32 would read inf (asinh(1e30) is 69)


@dataclass(frozen=True)
class PseudoLog:
    """(F,) each: ``on`` bool, ``center`` and ``scale`` (0 and 1 where off); the same
    centres and scales as F centres then F scales (``parts``) for the numpy inverse."""

    on: Tensor
    center: Tensor
    scale: Tensor
    parts: tuple[float, ...]

    def forward(self, v: Tensor) -> Tensor:
        """(B, F) raw values -> the units the model reads (nan stays nan)."""
        z = ((v - self.center) / self.scale).clamp(-LIMIT, LIMIT)
        return torch.where(self.on, torch.asinh(z), v)

    def inverse(self, y: F32) -> F32:
        """(B, F) values in the model's units -> raw units."""
        return raw_of(y, self.parts)


def tame_of(center: Tensor, scale: Tensor) -> PseudoLog:
    """The transform of per-feature ``center`` and ``scale`` (0: the feature as it came)."""
    on = scale > 0
    zero, one = torch.zeros_like(scale), torch.ones_like(scale)
    parts = tuple(float(v) for v in torch.cat([center, scale]).cpu().tolist())
    return PseudoLog(on, torch.where(on, center, zero), torch.where(on, scale, one), parts)


def raw_of(y: F32, parts: tuple[float, ...]) -> F32:
    """(T, F) values in the units :func:`pseudo_log` gives -> raw units (only the columns
    read through it are touched: sinh of another's value could overflow)."""
    out = np.array(y, np.float32)
    f = out.shape[1]
    if len(parts) != 2 * f:
        return out
    m, c = np.asarray(parts[:f], np.float32), np.asarray(parts[f:], np.float32)
    on = c > 0
    out[:, on] = m[on] + c[on] * np.sinh(out[:, on])
    return out


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
    out[:, on] = np.arcsinh(np.clip((v[:, on] - m[on]) / c[on], -LIMIT, LIMIT))
    return out
