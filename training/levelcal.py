"""The level rule (:mod:`detector.core.level`) measured on clean history: its prior, each
span and channel's scale and its statistic per reading, for calibration.

Like the shift rule's (:mod:`training.shiftcal`), its statistic needs no model and is
computed from the series themselves with the engine's own step
(:func:`detector.core.level.level_step`), every stream from a cold state as live. What
this leaves out: the engine holds the rule's learning still during anomalous runs, which
clean history seldom has.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import torch

from detector.core.level import (
    AR_BLOCKS,
    SPANS,
    LevelConfig,
    LevelState,
    bank_statistic,
    level_step,
)
from detector.core.scoring import Scaler, ScoringConfig
from training.data import StreamSeries
from training.shiftcal import SHIFT_FLOOR, shift_off_reason
from training.tail import channel_scale, scaled_max, tail_threshold
from training.walk import walk

__all__ = ["calibrate_level", "level_prior", "level_statistic"]

log = logging.getLogger(__name__)
F = npt.NDArray[np.float64]
# The least level a span and channel's own tail is given when the scales are set (one
# that never moved does not make every other one's scale large), and the rule's least
# threshold where ``floor`` is higher, as the shift rule's (training.budget.least).
LEVEL_FLOOR = SHIFT_FLOOR


def _walk(
    series: Sequence[StreamSeries], scaler: Scaler, cfg: LevelConfig, warmup: int, want: str
) -> list[F]:
    """Per series, from a cold state, one of: ``r`` (T, F; nan where the channel gave no
    value it is judged by), ``raw`` each average in its spread for white innovations (T,
    S F; nan where the stream's own spread does not learn from it: not judged, or before
    ``warmup + slow``) or ``stat`` the statistic per span and channel in the stream's own
    spread (T, S F). ``cfg``'s prior and spread () are 1 for every column."""
    f = len(scaler.mean)
    width = len(SPANS) * f
    prior = torch.tensor(cfg.prior or (1.0,) * f, dtype=torch.float32)
    spread = torch.tensor(cfg.spread or (1.0,) * width, dtype=torch.float32)

    def start(b: int, f: int) -> LevelState:
        z = torch.zeros
        return LevelState(
            z(b, f), z(b, f, f), z(b, f), z(b, AR_BLOCKS * f), z(b, width), z(b, 2 * width), z(b)
        )

    def step(
        st: LevelState, x: torch.Tensor, seen: torch.Tensor
    ) -> tuple[LevelState, torch.Tensor]:
        still, ready = torch.zeros(len(x), dtype=torch.bool), st.seen >= warmup + cfg.slow
        nxt, stat = level_step(st, x, seen, still, ready, cfg, prior, spread)
        use = seen & (st.taken > 0)
        if want == "r":
            return nxt, torch.where(use, x - st.ref, torch.nan)
        if want == "raw":  # as the engine's own spread counts them
            counted = (use & (st.taken >= cfg.slow) & ready.unsqueeze(1)).repeat(1, len(SPANS))
            return nxt, torch.where(counted, bank_statistic(nxt.bank), torch.nan)
        return nxt, stat

    return walk(series, scaler, start, step, lambda _, out: (out,))[0]


def level_prior(
    series: Sequence[StreamSeries], scaler: Scaler, cfg: LevelConfig
) -> tuple[float, ...] | None:
    """Each channel's typical variance of ``r`` — the median over streams of its mean
    square over its values after the first ``slow`` readings — or None, with a warning
    saying what is missing, when ``series`` cannot calibrate the rule."""
    f = len(scaler.mean)
    why = shift_off_reason(f, series, cfg.slow, "level")
    if why:
        log.warning("level rule off in this model: %s", why)
        return None
    rs = _walk(series, scaler, replace(cfg, prior=()), 0, "r")
    with warnings.catch_warnings():  # a channel a stream never gave: nan, left out
        warnings.simplefilter("ignore", RuntimeWarning)
        per = [np.nanmean(r[cfg.slow :] ** 2, axis=0) for r in rs if len(r) > 2 * cfg.slow]
        ms = np.nan_to_num(np.nanmedian(np.stack(per), axis=0))
    least = max(float(np.max(ms)) * 1e-6, 1e-12)  # a channel that never moved
    return tuple(float(max(v, least)) for v in ms)


def level_statistic(
    series: Sequence[StreamSeries], scaler: Scaler, cfg: LevelConfig, warmup: int
) -> list[F]:
    """Per series, the rule's statistic (the largest span and channel's over its scale) per
    reading (T,), ``-inf`` where the rule does not decide yet (the first ``warmup + slow``
    readings)."""
    return [scaled_max(z, cfg.scale) for z in _columns(series, scaler, cfg, warmup)]


def _columns(
    series: Sequence[StreamSeries], scaler: Scaler, cfg: LevelConfig, warmup: int
) -> list[F]:
    """Per series, the statistic per span and channel (T, S F), ``-inf`` before it decides."""
    stats = _walk(series, scaler, cfg, warmup, "stat")
    for z in stats:
        z[: warmup + cfg.slow] = -np.inf
    return stats


def calibrate_level(
    series: Sequence[StreamSeries],
    scaler: Scaler,
    scoring: ScoringConfig,
    alarm_rate: float,
    floor: float,
    prior_from: Sequence[StreamSeries] | None = None,
    scale_from: Sequence[StreamSeries] | None = None,
) -> LevelConfig | None:
    """The level rule with its prior (from ``prior_from``, default ``series``), each span
    and channel's spread and scale (from ``scale_from``, default ``series``: the RMS of
    each average, the tails of the statistic) and a threshold at ``alarm_rate`` per reading
    of its statistic's tail on ``series`` (a budget replaces it); None (off, with a
    warning) when they cannot calibrate it."""
    assert scoring.level is not None
    prior = level_prior(series if prior_from is None else prior_from, scaler, scoring.level)
    if prior is None:
        return None
    cfg = replace(scoring.level, prior=prior, scale=(), spread=())
    cfg = replace(cfg, spread=_spread(series, scale_from, scaler, cfg, scoring.warmup))
    zs = _columns(series, scaler, cfg, scoring.warmup)
    if (n := sum(int(np.isfinite(z[:, 0]).sum()) for z in zs)) < 100:
        log.warning("level rule off in this model: only %d readings to calibrate on", n)
        return None
    gap = scoring.incidents.resolve_after if scoring.incidents is not None else 1
    tails = zs if scale_from is None else _columns(scale_from, scaler, cfg, scoring.warmup)
    try:
        cfg = replace(cfg, scale=channel_scale(tails, alarm_rate, gap, LEVEL_FLOOR))
    except ValueError:  # too little of the fleet's history past warm-up: the series' own
        cfg = replace(cfg, scale=channel_scale(zs, alarm_rate, gap, LEVEL_FLOOR))
    z = np.concatenate([scaled_max(c, cfg.scale) for c in zs])
    z = z[np.isfinite(z)].astype(np.float32)
    least = min(floor, LEVEL_FLOOR)  # the statistic is in units of its least column's tail
    return replace(cfg, threshold=max(least, tail_threshold(z, alarm_rate)))


def _spread(
    series: Sequence[StreamSeries],
    fleet: Sequence[StreamSeries] | None,
    scaler: Scaler,
    cfg: LevelConfig,
    warmup: int,
) -> tuple[float, ...]:
    """Each average's RMS (in white units) over the readings of ``fleet`` a stream's own
    spread learns from (of ``series`` where the fleet has fewer than 100): every stream's
    own spread's prior; 1 for an average never learnt from."""
    for source in (fleet or series, series):
        raws = np.concatenate(_walk(source, scaler, cfg, warmup, "raw"))
        if np.isfinite(raws).any(axis=1).sum() >= 100:
            with warnings.catch_warnings():  # a column never learnt from: 1
                warnings.simplefilter("ignore", RuntimeWarning)
                ms = np.nan_to_num(np.nanmean(raws**2, axis=0), nan=1.0)
            return tuple(float(v) for v in np.sqrt(np.maximum(ms, 1e-6)))
    return ()
