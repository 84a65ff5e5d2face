"""Training data as tensors: each stream prepared once, then padded into batches of streams.

A prepared stream is the model's inputs (scaled values, forward-filled, with calendar
features), its targets (scaled values, ``nan`` where missing) and which steps are for
training (the rest is the held-out tail). :func:`pad_batches` groups prepared streams in
a given order; :func:`training.fit.fit` picks that order (similar lengths together).
Also here: where each stream's held-out tail starts, the scaler and the loss's per-feature
weights measured on the training parts, and the calendar inputs' phase shift
(:func:`rotate_phases`) that keeps a short history from being memorised by the hour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from detector.core.model import calendar_features
from detector.core.scoring import Scaler
from training.data import StreamSeries

__all__ = [
    "SMOOTHING_GRID",
    "PaddedBatch",
    "PreparedStream",
    "choose_smoothing",
    "constant_features",
    "fit_scaler",
    "forward_fill",
    "noise_weights",
    "pad_batches",
    "rotate_phases",
    "smoothed_levels",
    "split_points",
]


def split_points(series: Sequence[StreamSeries], val_fraction: float) -> list[int]:
    """Index where each stream's held-out tail starts (``len`` when too short to hold one)."""
    out = []
    for s in series:
        n_val = int(len(s) * val_fraction)
        out.append(len(s) - n_val if n_val >= 1 and len(s) - n_val >= 1 else len(s))
    return out


def fit_scaler(series: Sequence[StreamSeries], split: Sequence[int], floor: float) -> Scaler:
    """nan-aware per-feature mean/std over the training parts; std floored, never 0."""
    parts = [s.values[:k] for s, k in zip(series, split, strict=True) if k]
    x = np.concatenate(parts).astype(np.float64)  # (N, F)
    with np.errstate(all="ignore"):
        n = (~np.isnan(x)).sum(axis=0)
        mean = np.where(n > 0, np.nansum(x, axis=0) / np.maximum(n, 1), 0.0)
        var = np.where(n > 1, np.nansum((x - mean) ** 2, axis=0) / np.maximum(n - 1, 1), 0.0)
    # A constant feature still needs a unit: a floor relative to its magnitude. One that
    # moves by more than that fraction of its level keeps its own spread, however small
    # its units (a channel of ~1e-6 floored at 1e-3 was invisible to the model).
    sd = np.sqrt(var)
    std = np.where(sd > floor * np.abs(mean), sd, floor * np.maximum(1.0, np.abs(mean)))
    return Scaler(tuple(map(float, mean)), tuple(map(float, std)))


def constant_features(series: Sequence[StreamSeries]) -> dict[int, float]:
    """Features with one and the same observed value in every stream's whole history, with
    that value."""
    f = series[0].values.shape[1] if series else 0
    lo, hi = np.full(f, np.inf), np.full(f, -np.inf)
    for s in series:
        if len(s):
            gap = np.isnan(s.values)
            lo = np.minimum(lo, np.where(gap, np.inf, s.values).min(axis=0))
            hi = np.maximum(hi, np.where(gap, -np.inf, s.values).max(axis=0))
    return {int(j): float(lo[j]) for j in np.flatnonzero(np.isfinite(lo) & (lo == hi))}


def noise_weights(
    series: Sequence[StreamSeries], split: Sequence[int], scaler: Scaler
) -> np.ndarray:
    """Per-feature loss weights (F,), mean 1: inverse noise variance in scaler units.

    Half the mean squared first difference estimates a slowly varying signal's noise
    variance: what even a perfect model cannot predict. Missing values break a difference.
    """
    std = np.asarray(scaler.std, np.float64)
    sq = np.zeros(len(std))
    n = np.zeros(len(std))
    for s, k in zip(series, split, strict=True):
        d = np.diff(s.values[:k].astype(np.float64), axis=0) / std  # (T-1, F)
        ok = ~np.isnan(d)
        sq += (np.where(ok, d, 0.0) ** 2).sum(axis=0)
        n += ok.sum(axis=0)
    var = np.where(n > 0, sq / np.maximum(n, 1) / 2, 1.0)
    w = 1.0 / np.maximum(var, 1e-4)  # a feature is never trusted beyond 1% of its spread
    return np.asarray(w / w.mean(), dtype=np.float32)


def smoothed_levels(fed: np.ndarray, smoothing: tuple[float, ...]) -> np.ndarray:
    """The level before each step of ``fed`` (T, F): zeros first (a fresh stream), then the
    first reading, then ``level + a * (fed - level)`` per feature (``()``: the last reading).

    >>> smoothed_levels(np.array([[2.0], [4.0], [4.0]], np.float32), (0.5,))[:, 0].tolist()
    [0.0, 2.0, 3.0]
    """
    out = np.zeros_like(fed)
    if len(fed) < 2:
        return out
    if not smoothing:
        out[1:] = fed[:-1]
        return out
    a = np.asarray(smoothing, np.float32)
    out[1] = fed[0]
    for t in range(1, len(fed) - 1):
        out[t + 1] = out[t] + a * (fed[t] - out[t])
    return out


SMOOTHING_GRID = (1.0, 0.7, 0.5, 0.35, 0.25, 0.15)


def choose_smoothing(
    series: Sequence[StreamSeries], split: Sequence[int], scaler: Scaler
) -> tuple[float, ...]:
    """Per feature, the weight ``a`` (of ``SMOOTHING_GRID``) whose smoothed level forecasts
    the next reading of the training parts best (least mean squared error).

    1 (the last reading) wins on a smooth or strongly autocorrelated channel and at a
    square cycle's edges; less on white noise around a slow level, where the last reading
    carries its noise into the forecast. A trend-free statistic of the data, fitted once:
    the network then learns corrections on top of it, as on top of the last reading.
    """
    mean = np.asarray(scaler.mean, np.float32)
    std = np.asarray(scaler.std, np.float32)
    f = len(mean)
    sq = np.zeros((len(SMOOTHING_GRID), f))
    n = np.zeros(f)
    for s, k in zip(series, split, strict=True):
        z = ((s.values[:k] - mean) / std).astype(np.float32)
        if len(z) < 3:
            continue
        fed = forward_fill(z)
        target, ok = z[2:], ~np.isnan(z[2:])  # from the third reading: the level is set
        n += ok.sum(axis=0)
        for j, a in enumerate(SMOOTHING_GRID):
            lv = smoothed_levels(fed, (a,) * f)[2:]
            sq[j] += np.where(ok, (np.nan_to_num(target) - lv) ** 2, 0.0).sum(axis=0)
    if not n.all():
        return ()
    best = np.asarray(SMOOTHING_GRID)[np.argmin(sq, axis=0)]
    return () if (best == 1.0).all() else tuple(map(float, best))


def forward_fill(x: np.ndarray) -> np.ndarray:
    """Forward-fill nan along axis 0 of ``x`` (T, F); leading nan become 0 (the mean)."""
    t = np.arange(len(x))[:, None]
    idx = np.where(np.isnan(x), 0, t)
    np.maximum.accumulate(idx, axis=0, out=idx)
    filled = np.take_along_axis(x, idx, axis=0)
    return np.asarray(np.nan_to_num(filled, nan=0.0), dtype=np.float32)


class PreparedStream:
    """One stream, prepared once: inputs (T, I), targets (T, F) nan = missing, train mask (T,).

    ``k`` is where the stream's held-out tail starts.
    """

    def __init__(
        self,
        s: StreamSeries,
        scaler: Scaler,
        periods: tuple[float, ...],
        k: int,
        smoothing: tuple[float, ...] = (),
    ):
        mean = np.asarray(scaler.mean, np.float32)
        std = np.asarray(scaler.std, np.float32)
        z = ((s.values - mean) / std).astype(np.float32)  # (T, F) scaler units
        cal = calendar_features(torch.from_numpy(np.ascontiguousarray(s.ts_ms)), periods)
        fed = forward_fill(z)
        self.inputs = torch.cat([torch.from_numpy(fed), cal], dim=1)
        self.targets = torch.from_numpy(z)
        self.train = torch.arange(len(s)) < k
        # The level persistence starts from before each step, as the engine keeps it
        # (ModelConfig.smoothing): computed once here, so training chunks start from it.
        self.levels = torch.from_numpy(smoothed_levels(fed, smoothing))


class PaddedBatch:
    """Streams padded to a common length T: inputs (B, T, I), targets (B, T, F), train (B, T).

    Padding has nan targets and is neither trained nor validated on.
    """

    def __init__(self, streams: Sequence[PreparedStream], device: torch.device) -> None:
        pad = torch.nn.utils.rnn.pad_sequence
        self.inputs = pad([s.inputs for s in streams], batch_first=True).to(device)
        self.targets = pad(
            [s.targets for s in streams], batch_first=True, padding_value=math.nan
        ).to(device)
        self.train = pad([s.train for s in streams], batch_first=True).to(device)
        self.levels = pad([s.levels for s in streams], batch_first=True).to(device)
        self.valid = pad([~s.train for s in streams], batch_first=True).to(device)
        self.length = self.inputs.shape[1]


def pad_batches(
    streams: Sequence[PreparedStream], batch_size: int, device: torch.device
) -> list[PaddedBatch]:
    """``streams`` cut, in their order, into batches of ``batch_size`` (the last may be smaller)."""
    return [
        PaddedBatch(streams[b0 : b0 + batch_size], device)
        for b0 in range(0, len(streams), batch_size)
    ]


def rotate_phases(cal: Tensor, shift: Tensor) -> Tensor:
    """Calendar inputs ``cal`` (B, T, 2P: sin, cos per period) with each phase moved by
    ``shift`` (B, P) radians.

    >>> cal = torch.tensor([[[0.0, 1.0]]])  # phase 0
    >>> rotate_phases(cal, torch.tensor([[math.pi / 2]])).round(decimals=4).abs()
    tensor([[[1., 0.]]])
    """
    s, c = cal[..., 0::2], cal[..., 1::2]
    ds, dc = torch.sin(shift).unsqueeze(1), torch.cos(shift).unsqueeze(1)
    return torch.stack([s * dc + c * ds, c * dc - s * ds], dim=-1).flatten(-2)
