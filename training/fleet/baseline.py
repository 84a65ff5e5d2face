"""The statistical baseline anomalyd is compared with: z-scores of one-step differences.

Per stream and channel, from that stream's clean history only (no labels):

- ``d(t) = x(t) - x(t-1)`` over the channel's last observed value, and its short average
  ``m(t)``, the mean of the last ``short`` differences (a level shift or a fast drift);
- robust centre and scale of each (median, 1.4826 MAD);
- a reading's score is the largest ``|z|`` of ``d`` and ``m`` over its observed channels;
- the stream's threshold is the ``1 - alarm_rate`` quantile of its history's scores.

A reading scoring above its stream's threshold is flagged; flags become incidents through
:func:`training.fleet.score.incidents_from_flags`, the same rule as the engine's, so the
two are compared incident for incident. Every evaluation segment is scored from a cold
start (its first reading has no difference), as the engine's replay is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from training.data import StreamSeries
from training.fleet.score import RESOLVE_AFTER, Flagged, incidents_from_flags

__all__ = ["Baseline", "BaselineConfig", "StreamStats"]

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class BaselineConfig:
    """The baseline's few settings, fixed before any evaluation."""

    short: int = 5  # differences in the short average
    alarm_rate: float = 1e-3  # share of a stream's clean history above its threshold
    resolve_after: int = RESOLVE_AFTER

    def __post_init__(self) -> None:
        if self.short < 1 or not 0 < self.alarm_rate < 1 or self.resolve_after < 1:
            raise ValueError(f"short >= 1, 0 < alarm_rate < 1, resolve_after >= 1: {self}")


@dataclass(frozen=True, eq=False)
class StreamStats:
    """One stream's fitted statistics: centres and scales (2, F) for ``d`` and ``m``."""

    centre: F64
    scale: F64
    threshold: float


def _ffill(x: F64) -> F64:
    """Forward-fill NaNs along axis 0 (leading NaNs stay)."""
    out = x.copy()
    for t in range(1, len(out)):
        gap = np.isnan(out[t])
        out[t, gap] = out[t - 1, gap]
    return out


def _stats(values: npt.ArrayLike, short: int) -> tuple[F64, F64]:
    """(d, m): differences and their short average, (2, T, F); NaN where unobserved."""
    x = np.asarray(values, dtype=np.float64)
    filled = _ffill(x)
    d = np.full_like(x, np.nan)
    d[1:] = filled[1:] - filled[:-1]
    csum = np.nancumsum(np.nan_to_num(d), axis=0)
    m = np.full_like(x, np.nan)
    if len(x) > short:
        m[short:] = (csum[short:] - csum[:-short]) / short
    d[np.isnan(x)] = np.nan  # a missing cell scores nothing
    m[np.isnan(x)] = np.nan
    return d, m


def _scores(values: npt.ArrayLike, st: StreamStats, short: int) -> F64:
    """(T,) the largest |z| of a reading over channels and both statistics (0: none)."""
    both = np.stack(_stats(values, short))  # (2, T, F)
    z = np.abs(both - st.centre[:, None, :]) / st.scale[:, None, :]
    z = np.nan_to_num(z, nan=0.0)
    out: F64 = z.max(axis=(0, 2)) if z.size else np.zeros(both.shape[1])
    return out


class Baseline:
    """Per-stream z-scores of one-step differences, thresholds from clean history.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> ts = np.arange(3000, dtype=np.int64) * 60_000
    >>> hist = StreamSeries("s", ts[:2000], rng.normal(size=(2000, 2)).astype(np.float32))
    >>> new = rng.normal(size=(1000, 2)).astype(np.float32)
    >>> new[500, 1] += 25.0
    >>> base = Baseline().fit([hist])
    >>> flags = base.flags(StreamSeries("s", ts[2000:], new))
    >>> bool(flags[500]), int(flags.sum())  # the spike, and one false flag at 1e-3
    (True, 4)
    >>> rows = base.replay([StreamSeries("s", ts[2000:], new)])
    >>> [i for i, r in enumerate(rows) if r.anomaly]  # incidents opened
    [18, 500]
    """

    def __init__(self, cfg: BaselineConfig | None = None) -> None:
        self.cfg = cfg or BaselineConfig()
        self.streams: dict[str, StreamStats] = {}

    def fit(self, history: Sequence[StreamSeries]) -> Baseline:
        """Fit every stream's centres, scales and threshold on its clean history."""
        for s in history:
            d, m = _stats(s.values, self.cfg.short)
            both = np.stack([d, m])  # (2, T, F)
            with np.errstate(all="ignore"):
                centre = np.nan_to_num(np.nanmedian(both, axis=1))
                mad = 1.4826 * np.nanmedian(np.abs(both - centre[:, None, :]), axis=1)
                std = np.nanstd(both, axis=1)
            # Quantised channels can have a MAD of 0: fall back to the std, then to 1.
            scale = np.where(mad > 0, mad, np.where(std > 0, std, 1.0))
            scale = np.nan_to_num(scale, nan=1.0)
            stats = StreamStats(centre, scale, np.inf)
            hist = _scores(s.values, stats, self.cfg.short)
            threshold = float(np.quantile(hist, 1 - self.cfg.alarm_rate)) if hist.size else 0.0
            self.streams[s.stream_id] = StreamStats(centre, scale, threshold)
        return self

    def flags(self, series: StreamSeries) -> npt.NDArray[np.bool_]:
        """(T,) readings of ``series`` scoring above its stream's threshold, from a cold start."""
        st = self.streams.get(series.stream_id)
        if st is None:
            raise KeyError(f"stream {series.stream_id!r} has no history in the baseline")
        out: npt.NDArray[np.bool_] = _scores(series.values, st, self.cfg.short) > st.threshold
        return out

    def replay(self, series: Sequence[StreamSeries]) -> list[Flagged]:
        """Every reading of ``series`` with the baseline's incidents."""
        rows: list[Flagged] = []
        for s in series:
            opened, inside = incidents_from_flags(self.flags(s), self.cfg.resolve_after)
            rows += map(
                Flagged,
                [s.stream_id] * len(s),
                s.ts_ms.tolist(),
                opened.tolist(),
                inside.tolist(),
            )
        return rows
