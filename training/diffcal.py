"""The difference rule (:mod:`detector.core.difference`) measured on clean history: its
prior, the scale of each change and its statistic per reading, for calibration.

Like the shift rule, it needs no model: its statistic follows each stream's readings
(scaler units) alone, so it is computed here from the series with the engine's own step
(:func:`detector.core.difference.difference_step`), every stream from a cold state as live.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import torch

from detector.core.difference import SHORT, DifferenceConfig, DifferenceState, difference_step
from detector.core.scoring import Scaler, ScoringConfig
from training.data import StreamSeries, scaled_padded
from training.tail import channel_scale, scaled_max, tail_threshold

__all__ = ["calibrate_difference", "difference_prior", "difference_statistic", "difference_walk"]

log = logging.getLogger(__name__)
F = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
MAD_TO_STD = 1.4826  # a normal's standard deviation over its median absolute deviation


def difference_walk(
    series: Sequence[StreamSeries], scaler: Scaler, cfg: DifferenceConfig, prior: torch.Tensor
) -> list[F32]:
    """Per series, each change in its spread per reading (T, 2F), every stream from a cold
    state. A stream past its end reads as missing values: its state no longer matters."""
    xs, lens = scaled_padded(series, scaler.mean, scaler.std)
    b, f = len(series), xs.shape[2]
    st = DifferenceState(
        torch.zeros(b, SHORT * f), torch.zeros(b, f), torch.zeros(b, 2 * f), torch.zeros(b, 2 * f)
    )
    x_all = torch.from_numpy(xs)
    z_out = np.zeros((*xs.shape[:2], 2 * f), dtype=np.float32)
    for t in range(xs.shape[1]):  # one step of every stream
        x = x_all[:, t]
        st, z = difference_step(st, x, ~torch.isnan(x), prior, cfg.memory)
        z_out[:, t] = z.numpy()
    return [z_out[i, : lens[i]] for i in range(b)]


def difference_statistic(
    series: Sequence[StreamSeries], scaler: Scaler, cfg: DifferenceConfig, warmup: int
) -> list[F]:
    """Per series, the statistic ``max_c z_c / scale_c`` per reading (T,), ``-inf`` in the
    first ``warmup`` readings (no rule decides there)."""
    return [scaled_max(z, cfg.scale) for z in _changes(series, scaler, cfg, warmup)]


def _changes(
    series: Sequence[StreamSeries], scaler: Scaler, cfg: DifferenceConfig, warmup: int
) -> list[F32]:
    """Per series, each change in its spread (T, 2F), ``-inf`` before the rule decides."""
    zs = difference_walk(series, scaler, cfg, torch.tensor(cfg.prior, dtype=torch.float32))
    for z in zs:
        z[:warmup] = -np.inf
    return zs


def difference_prior(series: Sequence[StreamSeries], scaler: Scaler) -> tuple[float, ...] | None:
    """Each channel's typical spread of ``d``, then of ``m`` (2F values, scaler units): per
    stream its robust spread (:func:`_spread`), the median over streams;
    None, with a warning saying what is missing, when ``series`` is too short for it."""
    xs, lens = scaled_padded(series, scaler.mean, scaler.std)
    per_stream = []
    for x, n in zip(xs, lens, strict=True):
        x = x[:n].astype(np.float64)
        if len(x) <= 2 * SHORT:
            continue
        missing = np.isnan(x)
        for t in range(1, len(x)):  # carried forward, as the rule does
            x[t, missing[t]] = x[t - 1, missing[t]]
        d, m = x[1:] - x[:-1], (x[SHORT:] - x[:-SHORT]) / SHORT
        # judged as the rule judges them: over readings the channel gave, none missing
        gap = np.lib.stride_tricks.sliding_window_view(missing, SHORT + 1, axis=0).any(axis=-1)
        d[missing[1:] | missing[:-1]], m[gap] = np.nan, np.nan
        per_stream.append(np.concatenate([_spread(d), _spread(m)]))
    if not per_stream:
        log.warning("difference rule off in this model: no stream has %d readings", 2 * SHORT + 1)
        return None
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a channel with no value: nan, below
        spread = np.nanmedian(np.stack(per_stream), axis=0)
    spread = np.nan_to_num(spread, nan=0.0)
    # a channel that never moved (quantised, constant): the least a change is judged by
    least = max(float(np.max(spread)) * 1e-3, 1e-6)
    return tuple(float(max(v, least)) for v in spread)


def _spread(c: F) -> F:
    """Per column, 1.4826 x the median absolute change, or where that is 0 (a quantised
    channel that mostly stays) the standard deviation; nan where there is no change."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice": nan is the answer
        mad = MAD_TO_STD * np.nanmedian(np.abs(c), axis=0)
        out: F = np.where(mad > 0, mad, np.nanstd(c, axis=0))
    return out


def calibrate_difference(
    series: Sequence[StreamSeries],
    scaler: Scaler,
    scoring: ScoringConfig,
    alarm_rate: float,
    floor: float,
    prior_from: Sequence[StreamSeries] | None = None,
    scale_from: Sequence[StreamSeries] | None = None,
) -> DifferenceConfig | None:
    """The difference rule with its prior (from ``prior_from``, default ``series``), each
    change's scale (from the tails on ``scale_from``, default ``series``) and a threshold
    at ``alarm_rate`` per reading of its statistic's tail on ``series`` (a budget replaces
    it); None (off, with a warning) when they cannot calibrate it."""
    assert scoring.difference is not None
    prior = difference_prior(series if prior_from is None else prior_from, scaler)
    if prior is None:
        return None
    cfg = replace(scoring.difference, prior=prior, scale=())
    zs = _changes(series, scaler, cfg, scoring.warmup)
    if (n := sum(int(np.isfinite(z[:, 0]).sum()) for z in zs)) < 100:
        log.warning("difference rule off in this model: only %d readings to calibrate on", n)
        return None
    gap = scoring.incidents.resolve_after if scoring.incidents is not None else 1
    tails = zs if scale_from is None else _changes(scale_from, scaler, cfg, scoring.warmup)
    try:
        scale = channel_scale(tails, alarm_rate, gap, floor)
    except ValueError:  # too little of the fleet's history past warm-up: the series' own
        scale = channel_scale(zs, alarm_rate, gap, floor)
    cfg = replace(cfg, scale=scale)
    z = np.concatenate([scaled_max(c, scale) for c in zs]).astype(np.float32)
    return replace(cfg, threshold=max(floor, tail_threshold(z[np.isfinite(z)], alarm_rate)))
