"""Which channels the engine reads through a pseudo-log (:mod:`detector.core.tame`).

A channel is read through ``asinh((v - m) / c)`` when its values have a heavy tail: in most
streams their skewness exceeds :data:`SKEW` (a right tail heavier than an exponential's,
whose skewness is 2, a Gaussian's 0; a lognormal rate's with sigma 1 is 6) or their excess
kurtosis exceeds :data:`KURTOSIS` (tails on both sides heavier than an exponential's, whose
excess kurtosis is 6: a vibration's residual, a Student t of 3 degrees of freedom; the
simulated styles' channels are at -1.6 to -0.1), and the pseudo-log makes it smaller.
Four such symmetric channels beside a daily fleet's set the error threshold at 19 and the
peak rule's at 26 (docs/quality.md, session 34); no per-channel scale of a rule undoes
what their extremes do to the model's state. ``m`` and
``c`` are the channel's typical value and spread, both robust (a median and a median
absolute deviation), so that an offset (a latency's floor) does not hide the tail. Set
from the tail's shape, before any fleet was run with it. Only in a model of two channels
or more: the harm is one channel's extremes setting the thresholds of the others (a
single channel's tail is its own, and NAB's files are scored as before). Context and held
channels are left as they are (no rule judges their values, or their repeats).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from detector.core.scoring import ScoringConfig
from detector.core.tame import pseudo_log
from training.data import StreamSeries

__all__ = ["KURTOSIS", "SKEW", "as_served", "pseudo_log_scales", "read_through"]

log = logging.getLogger(__name__)

SKEW = 2.0  # a right tail heavier than an exponential's
KURTOSIS = 6.0  # excess kurtosis: tails heavier than an exponential's
MIN_VALUES = 30  # values a stream needs for its skewness to count
MAD_TO_STD = 1.4826  # a normal's standard deviation over its median absolute deviation


def _skew(v: npt.NDArray[np.float64]) -> float:
    sd = float(v.std())
    return float(((v - v.mean()) ** 3).mean() / sd**3) if sd > 0 else 0.0


def _kurtosis(v: npt.NDArray[np.float64]) -> float:
    """Excess kurtosis (a normal's is 0)."""
    sd = float(v.std())
    return float(((v - v.mean()) ** 4).mean() / sd**4 - 3) if sd > 0 else 0.0


def pseudo_log_scales(
    series: Sequence[StreamSeries], features: Sequence[str], skip: Sequence[int] = ()
) -> tuple[float, ...]:
    """The pseudo-log's F centres then F scales (ScoringConfig.pseudo_log; scale 0: read as
    it comes); () when no channel has a heavy tail, or the model has one channel.
    Centre and scale: the median over streams of each stream's median and robust spread
    (1.4826 x its median absolute deviation). A warning names the channels."""
    f_n = len(features)
    if f_n < 2:
        return ()
    centers, scales = [0.0] * f_n, [0.0] * f_n
    for f in range(f_n):
        if f in set(skip):
            continue
        given = [s.values[:, f][~np.isnan(s.values[:, f])].astype(np.float64) for s in series]
        given = [v for v in given if len(v) >= MIN_VALUES]
        if not given:
            continue
        skew = float(np.median([_skew(v) for v in given]))
        kurt = float(np.median([_kurtosis(v) for v in given]))
        mid = [float(np.median(v)) for v in given]
        spread = [
            MAD_TO_STD * float(np.median(np.abs(v - m))) for v, m in zip(given, mid, strict=True)
        ]
        m, c = float(np.median(mid)), float(np.median(spread))
        if not (skew > SKEW or kurt > KURTOSIS) or not c > 0:
            continue
        tamed = [np.arcsinh((v - m) / c) for v in given]
        lighter = (
            abs(float(np.median([_skew(t) for t in tamed]))) < skew
            if skew > SKEW
            else float(np.median([_kurtosis(t) for t in tamed])) < kurt
        )
        if lighter:
            centers[f], scales[f] = m, c
    if not any(scales):
        return ()
    log.warning(
        "%d channel(s) have a heavy tail (%s): the model and every rule read them "
        "through asinh((value - m) / c), so that their ordinary extremes do not set the "
        "other channels' thresholds",
        sum(1 for c in scales if c),
        ", ".join(f"{features[i]} m={centers[i]:.3g} c={c:.3g}" for i, c in enumerate(scales) if c),
    )
    return (*centers, *scales)


def as_served(
    served: ScoringConfig | None, features: Sequence[str], parts: tuple[float, ...]
) -> tuple[float, ...]:
    """``parts`` with the ``served`` model's centre and scale
    (:func:`training.context.served_scoring`) for every channel both read through the
    pseudo-log: a retrain whose medians moved a little would otherwise restart every
    stream (another pseudo-log, other units: Bundle.state_compatible)."""
    if served is None:  # a first model: nothing served, no stream to restart
        return parts
    return keep_served(served.pseudo_log, parts, features, "read through a pseudo-log")


def keep_served(
    was: tuple[float, ...], parts: tuple[float, ...], features: Sequence[str], what: str
) -> tuple[float, ...]:
    """Per-channel ``parts`` (F values, then F more, the channel on where the second is not
    0) with the served model's (``was``) for every channel on in both, or off in both (so
    that the same channels give ``was`` itself); a warning when the channels ``what`` (a
    phrase) change (every stream restarts once then)."""
    if was == parts:
        return parts
    f_n = len(features)
    old = [bool(v) for v in was[f_n:]] if was else [False] * f_n
    new = [bool(v) for v in parts[f_n:]] if parts else [False] * f_n
    if old != new:
        log.warning(
            "channels %s change from the served model's (%s) to %s: "
            "every stream starts afresh once when this version goes live",
            what,
            ", ".join(n for n, o in zip(features, old, strict=True) if o) or "none",
            ", ".join(n for n, o in zip(features, new, strict=True) if o) or "none",
        )
    if not was or not any(o and n for o, n in zip(old, new, strict=True)):
        return parts
    firsts, seconds = list(parts[:f_n]), list(parts[f_n:])
    for f in range(f_n):
        if old[f] == new[f]:
            firsts[f], seconds[f] = was[f], was[f_n + f]
    return (*firsts, *seconds)


def read_through(series: Sequence[StreamSeries], scales: tuple[float, ...]) -> list[StreamSeries]:
    """``series`` in the units the engine reads them with ``scales``."""
    if not scales:
        return list(series)
    return [StreamSeries(s.stream_id, s.ts_ms, pseudo_log(s.values, scales)) for s in series]
