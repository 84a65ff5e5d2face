"""The shift rule (:mod:`detector.core.shift`) measured on clean history: its prior, each
channel's scale and its statistic per reading, for calibration.

The rule needs no model: its state follows each stream's readings (scaler units) alone. So
its statistic is computed here from the series themselves with the engine's own step
(:func:`detector.core.shift.shift_step`), every stream from a cold state as live — not
from an engine run, whose outputs do not carry it. What this leaves out: the engine holds
the rule's reference still during anomalous runs, which clean history seldom has.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import torch

from detector.core.scoring import Scaler, ScoringConfig
from detector.core.shift import MAX_FEATURES, ShiftConfig, ShiftState, shift_step
from training.data import StreamSeries
from training.tail import channel_scale, scaled_max, tail_threshold
from training.walk import walk

__all__ = [
    "SHIFT_FLOOR",
    "calibrate_shift",
    "shift_off_reason",
    "shift_prior",
    "shift_statistic",
    "shift_walk",
]

log = logging.getLogger(__name__)
F = npt.NDArray[np.float64]
# The rule's least threshold (the budget's, training.budget); also the least level a
# channel's own tail is given when its scale is set (a channel that never moved does not
# make every other channel's scale large).
SHIFT_FLOOR = 2.0


def shift_off_reason(
    features: int, series: Sequence[StreamSeries], slow: int, rule: str = "shift"
) -> str:
    """Why ``rule`` (the shift rule, or another that judges a channel against the others'
    levels over ``slow`` readings) cannot be calibrated on ``series`` ('' when it can)."""
    if features < 2:
        return "it judges a channel against the others and the model has one feature"
    if features > MAX_FEATURES:
        return (
            f"the model has {features} features; the rule keeps F² per stream up to {MAX_FEATURES}"
        )
    if not any(len(s) > 2 * slow for s in series):
        return f"no calibration stream has {2 * slow} readings (twice {rule}.slow)"
    return ""


def shift_walk(
    series: Sequence[StreamSeries], scaler: Scaler, cfg: ShiftConfig, prior: torch.Tensor
) -> tuple[list[F], list[F]]:
    """Per series: ``d`` (T, F) and ``|z_f|`` (T, F), every stream from a cold state."""

    def start(b: int, f: int) -> ShiftState:
        z = torch.zeros
        return ShiftState(z(b, f), z(b, f), z(b, f, f), z(b, f), z(b))

    def step(
        st: ShiftState, x: torch.Tensor, seen: torch.Tensor
    ) -> tuple[ShiftState, torch.Tensor]:
        return shift_step(st, x, seen, torch.zeros(len(x), dtype=torch.bool), cfg, prior)

    ds, zs = walk(series, scaler, start, step, lambda nxt, z: (nxt.fast - nxt.slow, z.abs()))
    return ds, zs


def shift_statistic(
    series: Sequence[StreamSeries], scaler: Scaler, cfg: ShiftConfig, warmup: int
) -> list[F]:
    """Per series, the rule's statistic ``max_f |z_f| / scale_f`` per reading (T,),
    ``-inf`` where the rule does not decide yet (the first ``warmup + slow`` readings)."""
    return _statistic(_channels(series, scaler, cfg, warmup), cfg.scale)


def _channels(
    series: Sequence[StreamSeries], scaler: Scaler, cfg: ShiftConfig, warmup: int
) -> list[F]:
    """Per series, ``|z_f|`` (T, F), ``-inf`` before the rule decides."""
    _, zs = shift_walk(series, scaler, cfg, torch.tensor(cfg.prior, dtype=torch.float32))
    for z in zs:
        z[: warmup + cfg.slow] = -np.inf
    return zs


def _statistic(zs: list[F], scale: tuple[float, ...]) -> list[F]:
    return [scaled_max(z, scale) for z in zs]  # the rule has 2+ channels


def shift_prior(
    series: Sequence[StreamSeries], scaler: Scaler, cfg: ShiftConfig
) -> tuple[float, ...] | None:
    """Each channel's typical variance of ``d`` — the median over streams of its variance
    after the first ``slow`` readings — or None, with a warning saying what is missing,
    when ``series`` cannot calibrate the rule."""
    f = len(scaler.mean)
    why = shift_off_reason(f, series, cfg.slow)
    if why:
        log.warning("shift rule off in this model: %s", why)
        return None
    ds, _ = shift_walk(series, scaler, cfg, torch.ones(f))
    per_stream = [d[cfg.slow :].var(axis=0) for d in ds if len(d) > 2 * cfg.slow]
    var = np.median(np.stack(per_stream), axis=0)
    least = max(float(np.max(var)) * 1e-6, 1e-12)  # a channel that never moved
    return tuple(float(max(v, least)) for v in var)


def calibrate_shift(
    series: Sequence[StreamSeries],
    scaler: Scaler,
    scoring: ScoringConfig,
    alarm_rate: float,
    floor: float,
    prior_from: Sequence[StreamSeries] | None = None,
    scale_from: Sequence[StreamSeries] | None = None,
) -> ShiftConfig | None:
    """The shift rule with its prior (from ``prior_from``, default ``series``), each
    channel's scale (from the tails on ``scale_from``, default ``series``) and a threshold
    at ``alarm_rate / fast`` per reading of its statistic's tail on ``series`` (a budget
    replaces it); None (off, with a warning) when they cannot calibrate it."""
    assert scoring.shift is not None
    cfg = scoring.shift
    prior = shift_prior(series if prior_from is None else prior_from, scaler, cfg)
    if prior is None:
        return None
    cfg = replace(cfg, prior=prior, scale=())
    zs = _channels(series, scaler, cfg, scoring.warmup)
    if (n := sum(int(np.isfinite(z[:, 0]).sum()) for z in zs)) < 100:
        log.warning("shift rule off in this model: only %d readings to calibrate on", n)
        return None
    gap = scoring.incidents.resolve_after if scoring.incidents is not None else 1
    tails = zs if scale_from is None else _channels(scale_from, scaler, cfg, scoring.warmup)
    try:
        scale = channel_scale(tails, alarm_rate / cfg.fast, gap, SHIFT_FLOOR)
    except ValueError:  # too little of the fleet's history past warm-up: the series' own
        scale = channel_scale(zs, alarm_rate / cfg.fast, gap, SHIFT_FLOOR)
    cfg = replace(cfg, scale=scale)
    z = np.concatenate(_statistic(zs, cfg.scale)).astype(np.float32)
    return replace(
        cfg, threshold=max(floor, tail_threshold(z[np.isfinite(z)], alarm_rate / cfg.fast))
    )
