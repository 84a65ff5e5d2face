"""A stream's own spread of a per-feature quantity, pooled with the fleet's.

Two things are judged per stream against how that stream usually behaves, not only
against the fleet: the sustained rule's averages (``SustainConfig.own``) and, with
``ScoringConfig.own_scale``, the model's per-feature errors themselves. The same machinery
serves both: a mean square over the stream's last ``memory`` readings, winsorised (an
anomaly teaches the stream little), pooled with the fleet's ``scale`` as ``prior``
readings' worth (a new stream starts from the fleet's and moves to its own).

Why the errors too: the fleet's whitening equalises the errors of the fleet as a whole,
but streams differ — a sensor noisier than its fleet by a third, a stream whose load
wandered where the history never went (the model errs more there). Judged on the fleet's
scale, those streams open the false incidents and the quiet ones hide their anomalies
(docs/quality.md, session 17: every false incident of a clean coloured fleet came from a
stream and channel whose errors ran 1.4-1.5x the fleet's).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "OWN_CLIP",
    "OWN_MEMORY",
    "OWN_PRIOR",
    "own_errors",
    "own_scale_step",
    "pooled_spread",
    "spread_step",
]

OWN_MEMORY = 1000  # readings in a stream's own spread of its errors (``own_scale``)
OWN_PRIOR = 100.0  # readings' worth of the fleet's (whitened: 1) pooled into it
OWN_CLIP = 3.0  # spreads beyond which a reading's error adds no more to it


def pooled_spread(scale: Tensor | float, n: Tensor, ms: Tensor, prior: float) -> Tensor:
    """(B, F) ``sqrt`` of the mean square ``ms`` (B, F), each feature's over its ``n`` (B, F)
    readings, pooled with ``scale`` (F,) as ``prior`` readings."""
    return torch.sqrt((prior * scale * scale + n * ms) / (prior + n))


def spread_step(
    a: Tensor, spread: Tensor, clip: float, counted: Tensor, n: Tensor, ms: Tensor, memory: int
) -> tuple[Tensor, Tensor]:
    """``n`` and ``ms`` (B, F) after one more reading: each ``counted`` feature's ``|a|``,
    cut at ``clip x spread``, enters its mean square as an average over its last ``memory``
    counted readings; ``n`` counts each feature's own. A count per stream (it was, to
    layout 10) made a channel that reports one reading in thirty a mean of its few squares
    and of thirty times as many zeros: its spread a third of its own, and its first
    ordinary values false incidents (docs/quality.md, session 41)."""
    v = torch.minimum(a.abs(), spread * clip)
    n2 = torch.where(counted, (n + 1).clamp(max=memory), n)
    rate = 1.0 / n2.clamp(min=1)
    return n2, torch.where(counted, ms + rate * (v * v - ms), ms)


def own_errors(
    errors: Tensor, observed: Tensor, n: Tensor, ms: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The (whitened) ``errors`` (B, F) in units of each stream's own spread of them: the
    errors, their RMS over the observed features (B,) and the spread (B, F) used."""
    spread = pooled_spread(1.0, n, ms, OWN_PRIOR)
    own = errors / spread
    raw = torch.sqrt((own * own).sum(dim=1) / observed.sum(dim=1).clamp(min=1))
    return own, raw, spread


def own_scale_step(
    errors: Tensor, spread: Tensor, counted: Tensor, n: Tensor, ms: Tensor
) -> tuple[Tensor, Tensor]:
    """The own spread's state after a reading whose ``counted`` (B, F) errors (whitened, as
    before :func:`own_errors`) enter it."""
    return spread_step(errors, spread, OWN_CLIP, counted, n, ms, OWN_MEMORY)
