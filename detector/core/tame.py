"""Channels with a heavy tail, read through a pseudo-log.

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
reports its expectation back in the reading's. A channel whose tails are heavy on both
sides (a vibration's residual) is read through it too: ``asinh`` is odd, and compresses
both. The trainer picks the channels (:mod:`training.tame`) and records the centres and
scales in :attr:`detector.core.scoring.ScoringConfig.pseudo_log`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

__all__ = ["PseudoLog", "pseudo_log", "raw_of"]

F32 = npt.NDArray[np.float32]
LIMIT = 1e30  # of (v - m) / c: beyond it float32 would read inf (asinh(1e30) is 69)


def _split(parts: tuple[float, ...], f: int) -> tuple[F32, F32, npt.NDArray[np.bool_]] | None:
    """``parts`` (F centres, then F scales) as centres, scales and which are read through
    it (scale > 0); None when no feature of ``f`` is."""
    if len(parts) != 2 * f or not any(parts[f:]):
        return None
    m, c = np.asarray(parts[:f], np.float32), np.asarray(parts[f:], np.float32)
    return m, c, c > 0


@dataclass(frozen=True)
class PseudoLog:
    """The engine's transform: ``parts`` as ScoringConfig.pseudo_log holds them, and on
    the engine's device ``on`` (F,) bool, ``center`` and ``scale`` (F,) (0 and 1 where off)."""

    parts: tuple[float, ...]
    on: Tensor
    center: Tensor
    scale: Tensor

    @classmethod
    def of(cls, parts: tuple[float, ...], device: torch.device) -> PseudoLog:
        split = _split(parts, len(parts) // 2)
        if split is None:
            raise ValueError("a pseudo-log needs a feature read through it")
        m, c, on = split
        m, c = np.where(on, m, 0.0), np.where(on, c, 1.0)
        return cls(parts, *(torch.tensor(a, device=device) for a in (on, m, c)))

    def forward(self, v: Tensor) -> Tensor:
        """(B, F) raw values -> the units the model reads (nan stays nan)."""
        z = ((v - self.center) / self.scale).clamp(-LIMIT, LIMIT)
        return torch.where(self.on, torch.asinh(z), v)

    def inverse(self, y: F32) -> F32:
        """(B, F) values in the model's units -> raw units."""
        return raw_of(y, self.parts)


def raw_of(y: F32, parts: tuple[float, ...]) -> F32:
    """(T, F) values in the units :func:`pseudo_log` gives -> raw units (only the columns
    read through it are touched: sinh of another's value could overflow)."""
    out = np.array(y, np.float32)
    split = _split(parts, out.shape[1])
    if split is not None:
        m, c, on = split
        out[:, on] = m[on] + c[on] * np.sinh(out[:, on])
    return out


def pseudo_log(
    values: npt.NDArray[np.floating], parts: tuple[float, ...]
) -> npt.NDArray[np.float32]:
    """(T, F) raw values of one stream in the units the engine reads them through
    ``parts`` (F centres, then F scales: ScoringConfig.pseudo_log), float32 as there."""
    out = np.array(values, np.float32)
    split = _split(parts, out.shape[1])
    if split is not None:
        m, c, on = split
        out[:, on] = np.arcsinh(np.clip((out[:, on] - m[on]) / c[on], -LIMIT, LIMIT))
    return out
