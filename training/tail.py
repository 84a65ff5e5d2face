"""Clusters of exceedances and the exponential tail the budget fits to their peaks.

:mod:`training.budget` asks, per rule, for the level whose clusters of exceedances come at
a given rate per reading; this module answers from a clean history replayed as live:
exceedances of a base level closer together than ``gap`` readings are one cluster (as
incidents group flags), the cluster peaks over the base are fitted by an exponential, and
clusters far beyond the rest — anomalies the "clean" history held — are left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "BASE_QUANTILE",
    "MIN_CLUSTERS",
    "OUTLIER_EXCESS",
    "channel_scale",
    "channel_scale_of",
    "cluster_peaks",
    "history_outliers",
    "rate_level",
    "scaled_max",
    "seen_level",
    "tail_peaks",
    "tail_threshold",
]

BASE_QUANTILE = 0.99  # clusters are formed above this quantile of the statistic
MIN_CLUSTERS = 5  # cluster peaks needed before any is told apart from the rest
OUTLIER_EXCESS = 20.0  # typical tail excesses beyond which a cluster is an anomaly in the history
F = npt.NDArray[np.float64]


def cluster_peaks(stat: F, stream: npt.NDArray[np.int64], base: float, gap: int) -> F:
    """Peaks of the clusters of ``stat > base``: exceedances of one stream fewer than
    ``gap`` readings apart are one cluster. ``stat`` and ``stream`` (N,) are stream-major.

    >>> cluster_peaks(np.array([0, 5, 0, 6, 0, 0, 0, 7.0]), np.zeros(8, np.int64), 1.0, 3)
    array([6., 7.])
    """
    idx, starts = _clusters(stat, stream, base, gap)
    if idx.size == 0:
        return np.zeros(0)
    return np.maximum.reduceat(stat[idx], starts).astype(np.float64)


def _clusters(
    stat: F, stream: npt.NDArray[np.int64], base: float, gap: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The readings over ``base`` and where in them each cluster starts."""
    idx = np.flatnonzero(stat > base)
    new = np.r_[True, (np.diff(idx) > gap) | (stream[idx][1:] != stream[idx][:-1])]
    return idx, np.flatnonzero(new) if idx.size else idx


def history_outliers(stat: F, stream: npt.NDArray[np.int64], gap: int) -> list[tuple[int, float]]:
    """(position, peak) of each cluster :func:`rate_level` left out of its fit as an
    anomaly in the history (:func:`tail_peaks`), in ``stat``'s order."""
    finite = stat[np.isfinite(stat)]
    if finite.size < 100:
        return []
    base = float(np.quantile(finite, BASE_QUANTILE))
    x = np.where(np.isfinite(stat), stat, -np.inf)
    idx, starts = _clusters(x, stream, base, gap)
    if idx.size == 0:
        return []
    peaks = np.maximum.reduceat(x[idx], starts)
    kept = tail_peaks(peaks.astype(np.float64), base)
    if kept.size == peaks.size:
        return []
    cut = float(kept.max())  # never empty: the median excess passes its own cut
    ends = np.r_[starts[1:], idx.size]
    return [
        (int(idx[a + int(np.argmax(x[idx[a:b]]))]), float(pk))
        for a, b, pk in zip(starts, ends, peaks, strict=True)
        if pk > cut
    ]


def _tail(stat: F, stream: npt.NDArray[np.int64], gap: int) -> tuple[int, float, F]:
    """(readings with a finite ``stat``, its ``BASE_QUANTILE``, the cluster peaks over that
    less the history's outliers)."""
    finite = stat[np.isfinite(stat)]
    if finite.size < 100:
        raise ValueError(f"only {finite.size} readings to calibrate on; need 100")
    base = float(np.quantile(finite, BASE_QUANTILE))
    peaks = tail_peaks(
        cluster_peaks(np.where(np.isfinite(stat), stat, -np.inf), stream, base, gap), base
    )
    return finite.size, base, peaks


def rate_level(
    stat: F, stream: npt.NDArray[np.int64], rate: float, gap: int, floor: float
) -> float:
    """The level whose clusters of exceedances are ``rate`` per reading, by an exponential
    fit of the cluster peaks over ``BASE_QUANTILE`` (never below ``floor``)."""
    n, base, peaks = _tail(stat, stream, gap)
    if peaks.size < 3:  # too regular a statistic to fit: the largest value of its tail
        return max(floor, float(peaks.max()) if peaks.size else base)
    m = max(float((peaks - base).mean()), 1e-6)
    return max(floor, base + m * math.log(max(peaks.size / n / rate, 1.0)))


def scaled_max(z: npt.NDArray[np.floating[Any]], scale: tuple[float, ...]) -> F:
    """A max-over-channels rule's statistic per reading: the largest ``z_c / scale_c`` of
    ``z`` (N, C); ``scale`` () is 1 for every channel."""
    out: F = (z / np.asarray(scale or 1.0, dtype=np.float64)).max(axis=1)
    return out


def channel_scale(
    zs: Sequence[npt.NDArray[np.floating[Any]]], rate: float, gap: int, floor: float
) -> tuple[float, ...]:
    """:func:`channel_scale_of` a statistic given per series (``zs``: each (T, C))."""
    z = np.concatenate(zs)
    stream = np.concatenate([np.full(len(s), i, dtype=np.int64) for i, s in enumerate(zs)])
    return channel_scale_of(z, stream, rate, gap, floor)


def channel_scale_of(
    z: npt.NDArray[np.floating[Any]],
    stream: npt.NDArray[np.int64],
    rate: float,
    gap: int,
    floor: float,
) -> tuple[float, ...]:
    """Per channel of a max-over-channels statistic ``z`` (N, C; stream-major, ``stream``
    (N,) names each row's), the level its clusters reach at ``rate`` per reading, over the
    least such level among the channels that ever read above 0 (each level at least
    ``floor``; a channel never read: 1). Dividing each ``z_c`` by it gives every channel an
    equal share of the rule's false alarms, where one heavier-tailed channel would otherwise
    set the one threshold for all (docs/quality.md, sessions 33-34)."""
    read = [c for c in range(z.shape[1]) if np.any(np.isfinite(z[:, c]) & (z[:, c] > 0))]
    levels = {c: rate_level(z[:, c].astype(np.float64), stream, rate, gap, floor) for c in read}
    least = min(levels.values(), default=1.0)
    return tuple(float(levels.get(c, least) / least) for c in range(z.shape[1]))


def seen_level(stat: F, stream: npt.NDArray[np.int64], rate: float, gap: int) -> float:
    """The least level the history's own clusters allow at ``rate`` per reading: with k =
    ``rate`` x readings clusters allowed over it, the (k+1)-th largest peak (the largest
    while the history is too short for one); ``-inf`` when the history shows fewer than
    ``MIN_CLUSTERS`` peaks (too few to tell a glitch from its tail) or more than k.

    >>> x = np.r_[np.zeros(300), 2.0, np.zeros(300), 3.0, np.zeros(300), 1.0, 4.0, 5.0]
    >>> x[[50, 150]] = 6.0, 2.5
    >>> seen_level(x, np.zeros(x.size, np.int64), 1e-6, 5)
    6.0
    >>> seen_level(x, np.zeros(x.size, np.int64), 2e-3, 5)
    5.0
    """
    n, _, peaks = _tail(stat, stream, gap)
    k = int(rate * n)
    if peaks.size < MIN_CLUSTERS or k >= peaks.size:
        return -math.inf
    return float(np.sort(peaks)[::-1][k])


def tail_peaks(peaks: F, base: float) -> F:
    """``peaks`` (cluster peaks over ``base``) less the clusters far beyond the rest.

    A "clean" history holds what no tail fit should follow: a logging glitch (two fields
    swapped: a current of 232 A for one reading), a pump's start-up transient, a vibration
    burst. One such cluster in a few thousand readings dominates the exponential's mean
    excess and lifts the threshold above everything the live stream will do (SKAB, a
    public pump benchmark: thresholds of 109 and 548 from one glitch; docs/quality.md,
    session 20). A cluster whose excess is more than ``OUTLIER_EXCESS`` times the tail's
    typical one (its median excess over ln 2: the exponential's scale, unmoved by a few
    extremes) is an anomaly in the history, not its tail: left out of the fit, counted by
    the caller. An exponential tail puts a cluster there with probability e^-20 (a median
    of a few clusters is itself noisy: hence at least ``MIN_CLUSTERS`` of them, or all are
    kept). A tail much heavier than an exponential loses real clusters too (a Pareto tail
    of index 2, about 0.6 % of them): its threshold comes out lower and the budget is
    overshot, where without this one glitch puts it out of reach. On the simulated dev
    fleets nothing was left out (docs/quality.md, session 20).

    >>> tail_peaks(np.array([1.1, 1.3, 1.2, 1.5, 40.0]), 1.0)
    array([1.1, 1.3, 1.2, 1.5])
    """
    if peaks.size < MIN_CLUSTERS:
        return peaks
    excess = peaks - base
    scale = max(float(np.median(excess)) / math.log(2), 1e-9)
    kept: F = peaks[excess <= OUTLIER_EXCESS * scale]
    return kept


def tail_threshold(scores: npt.NDArray[np.float32], alarm_rate: float, tail: float = 0.01) -> float:
    """The score exceeded by a fraction ``alarm_rate`` of clean readings, by a tail fit.

    Peaks over threshold: above the ``1 - tail`` quantile ``u`` the excesses are fitted by
    an exponential (mean excess ``m``), so ``P(S > u + y) = tail · exp(-y / m)`` and the
    threshold is ``u + m · ln(tail / alarm_rate)``. It reaches rates far below what a
    validation set can show as a plain quantile (Siffer et al., KDD 2017, with a zero
    shape parameter).
    """
    if not 0 < alarm_rate < tail:
        raise ValueError(f"alarm_rate must be in (0, {tail}), got {alarm_rate}")
    u = float(np.quantile(scores, 1 - tail))
    excess = scores[scores > u] - u
    m = float(excess.mean()) if excess.size else 0.0
    return u + m * math.log(tail / alarm_rate)
