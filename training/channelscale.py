"""Each channel's scale for the rules that judge the largest of a per-channel statistic.

The peak rule (each feature's whitened error), the spike rule (each feature's pair of
opposite errors), the shift and difference rules all flag a reading when some channel's
statistic passes one threshold. Where one channel's statistic has a heavier clean tail than
the others' — a vibration's residual beside smooth temperatures, white noise beside a
cycle — that channel alone sets the threshold, and the others go unjudged: four Student-t
channels beside a daily fleet's four set its peak threshold at 26 where the fleet's own
reached 5-6 (docs/quality.md, session 34). Each channel's scale is the level its own clean
tail reaches at the rule's rate, over the least channel's (:func:`training.tail.channel_scale_of`);
the rule then judges ``z_c / scale_c`` against one threshold, which the budget sets as before.

Here: the per-channel statistics of the model's rules on a budget replay, their scales
measured on every calibration part's replay at once, and every part put in the shipped
model's scales (the no-model rules' are measured by :mod:`training.shiftcal` and
:mod:`training.diffcal` on the whole fleet).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import torch

from detector.core.scoring import ScoringConfig
from detector.core.spike import spike_pairs
from training.budgetreport import streams_apart
from training.calibrate import EngineRun
from training.tail import channel_scale_of

__all__ = ["measured_scales", "peak_channels", "shipped_scales", "spike_channels"]

F = npt.NDArray[np.float64]


def peak_channels(run: EngineRun) -> F:
    """The peak rule's per-feature statistic (N, F): each observed feature's ``|error|``."""
    return np.where(run.observed, np.abs(run.errors), 0.0)


def spike_channels(run: EngineRun) -> F:
    """The spike rule's per-feature pairs (N, F) (:func:`detector.core.spike.spike_pairs`):
    each reading paired with the one before it in its stream (``run.e_prev``), as the
    engine's state holds it."""
    e = torch.from_numpy(np.where(run.observed, run.errors, 0.0).astype(np.float32))
    return spike_pairs(e, torch.from_numpy(run.e_prev)).double().numpy()


def measured_scales(
    runs: Sequence[EngineRun],
    scorings: Sequence[ScoringConfig],
    rates: Mapping[str, float],
    gap: int,
    floor: float,
) -> list[ScoringConfig]:
    """``scorings`` with the peak and spike rules' per-feature scales measured on ``runs``
    (one per part, pooled; streams kept apart) at each rule's ``rates`` per reading, every
    channel's level at least ``floor``. A rule that is off, or has no rate, is left as is."""
    stream = streams_apart([r.stream for r in runs])
    out = list(scorings)
    for name, of in (("peak", peak_channels), ("spike", spike_channels)):
        if name not in rates or getattr(scorings[0], name) is None:
            continue
        z = np.concatenate([of(r) for r in runs])
        scale = channel_scale_of(z, stream, rates[name], gap, floor)
        out = [replace(sc, **{name: replace(getattr(sc, name), scale=scale)}) for sc in out]
    return out


def shipped_scales(scoring: ScoringConfig, first: ScoringConfig) -> ScoringConfig:
    """``scoring`` with the shift and difference rules' per-channel scales and the level
    rule's scales and spreads of the shipped model (``first``): the pooled statistic is in
    the units live scoring judges in, whatever each part's own calibration measured (a time
    block's is its own few readings')."""
    sh, dc = scoring.shift, scoring.difference
    if sh is not None and first.shift is not None and _fits(first.shift.scale, sh.prior):
        scoring = replace(scoring, shift=replace(sh, scale=first.shift.scale))
    if dc is not None and first.difference is not None and _fits(first.difference.scale, dc.prior):
        scoring = replace(scoring, difference=replace(dc, scale=first.difference.scale))
    lv, top = scoring.level, first.level
    if lv is not None and top is not None and len(top.prior) == len(lv.prior):
        scoring = replace(scoring, level=replace(lv, scale=top.scale, spread=top.spread))
    return scoring


def _fits(scale: tuple[float, ...], prior: tuple[float, ...]) -> bool:
    return not scale or len(scale) == len(prior)
