"""Which channels a fleet's streams carry in many sizes, and the history read at the fleet's.

A channel is read at the fleet's size (:mod:`detector.core.sizes`) when the typical one-step
change of its streams (the mean size of the changes that are not 0, over each stream's
whole history, where a cycle's slope averages out) spans more than :data:`SPREAD` times
from the fleet's 10th to its 90th percentile stream, over at least :data:`MIN_STREAMS`
streams. The six simulated styles
vary a channel by tens of percent from stream to stream and are left as they are; a fleet
of pumps in sizes from 1/10 to 10 is not (docs/quality.md, session 35). Both constants
were fixed before any run. A channel the model reads and no rule judges (context) and a
held one are never sized: their changes are events or updates, not a size.

The fleet's typical level and step of a channel are the medians, over the training
streams, of the estimates the engine makes of a stream in its first readings: the history
is then read through the engine's own function from each stream's start
(:func:`read_sized`), so the model learns what the engine will feed it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from detector.core.scoring import ScoringConfig
from detector.core.sizes import READINGS, Sizes, SizeState, size_step
from training.data import StreamSeries
from training.tame import as_served, keep_served, pseudo_log_scales, read_through

__all__ = ["MIN_STREAMS", "SPREAD", "engine_units", "fleet_sizes", "read_sized", "sizes_as_served"]

log = logging.getLogger(__name__)

SPREAD = 3.0  # the 90th percentile stream's typical change over the 10th's
MIN_STREAMS = 3  # streams with changes it takes to say that sizes spread


def _steps(values: np.ndarray) -> np.ndarray:
    """(F,) the mean size of the changes not 0 between given values, per channel (0: none)."""
    out = np.zeros(values.shape[1])
    for j in range(values.shape[1]):
        v = values[:, j][~np.isnan(values[:, j])]
        d = np.abs(np.diff(v.astype(np.float64)))
        d = d[d > 0]
        out[j] = d.mean() if d.size else 0.0
    return out


def _run(
    series: Sequence[StreamSeries], sz: Sizes, keep: bool = True, chunk: int = 256
) -> tuple[list[np.ndarray], SizeState]:
    """Every stream read through :func:`size_step` from its start, ``chunk`` streams at a
    time (padded with missing values): the values as read (``keep``), and each stream's
    state at its end."""
    f = sz.on.shape[0]
    read: list[np.ndarray] = []
    ends: list[SizeState] = []
    for a in range(0, len(series), chunk):
        part = series[a : a + chunk]
        v = torch.full((max(len(s.ts_ms) for s in part), len(part), f), float("nan"))
        for i, s in enumerate(part):
            v[: len(s.ts_ms), i] = torch.from_numpy(np.asarray(s.values, np.float32))
        st = SizeState.zeros(len(part), f)
        out = torch.empty_like(v) if keep else v
        with torch.inference_mode():
            for t in range(v.shape[0]):
                u, st, grown, _ = size_step(v[t], st, sz)
                st = st.afresh(grown)  # as the engine measures a size outgrown
                if keep:
                    out[t] = u
        read += [out[: len(s.ts_ms), i].numpy() for i, s in enumerate(part)] if keep else []
        ends.append(st)
    return read, SizeState(*(torch.cat(parts) for parts in zip(*ends, strict=True)))


def fleet_sizes(
    series: Sequence[StreamSeries], features: Sequence[str], skip: Sequence[int] = ()
) -> tuple[float, ...]:
    """ScoringConfig.sizes for ``series`` (F typical levels, then F typical steps, 0 where a
    channel is left as it came); () when no channel's sizes spread."""
    f = len(features)
    if not series or len(series) < MIN_STREAMS:
        return ()
    steps = np.array([_steps(np.asarray(s.values)) for s in series])  # (S, F)
    on = np.zeros(f, bool)
    for j in set(range(f)) - set(skip):
        moving = steps[:, j][steps[:, j] > 0]
        if moving.size >= MIN_STREAMS:
            lo, hi = np.quantile(moving, [0.1, 0.9])
            on[j] = hi > SPREAD * lo
    if not on.any():
        return ()
    probe = Sizes(torch.from_numpy(on), torch.zeros(f), torch.ones(f))
    _, st = _run(series, probe, keep=False)  # each stream's own, as the engine measures it
    level, step = np.zeros(f), np.zeros(f)
    for j in np.flatnonzero(on).tolist():
        given, moved = st.n[:, j].numpy() > 0, st.n[:, f + j].numpy() > 0
        if (done := st.n[:, f + j].numpy() >= READINGS).any():  # complete sizes, where any
            moved = done
        level[j] = float(np.median(st.level[:, j].numpy()[given])) if given.any() else 0.0
        step[j] = float(np.exp(np.median(st.step[:, j].numpy()[moved]))) if moved.any() else 0.0
    names = [features[j] for j in np.flatnonzero(step > 0).tolist()]
    log.info("channels read at the fleet's size (their streams' sizes spread): %s", names)
    return (*map(float, level), *map(float, step)) if names else ()


def read_sized(series: Sequence[StreamSeries], sizes: tuple[float, ...]) -> list[StreamSeries]:
    """``series`` as the engine reads them with ``sizes`` (each from its start)."""
    if not sizes or not series:
        return list(series)
    sz = Sizes.of(sizes, len(sizes) // 2, torch.device("cpu"))
    if sz is None:
        return list(series)
    read, _ = _run(series, sz)
    return [StreamSeries(s.stream_id, s.ts_ms, u) for s, u in zip(series, read, strict=True)]


def sizes_as_served(
    served: ScoringConfig | None,
    features: Sequence[str],
    sizes: tuple[float, ...],
    pseudo_log: tuple[float, ...] = (),
) -> tuple[float, ...]:
    """``sizes`` with the ``served`` model's level and step for every channel both size, in
    the same units (``pseudo_log``, the new model's): a retrain whose medians moved a little
    would otherwise restart every stream (their sizes are measured against the fleet's:
    Bundle.state_compatible)."""
    if served is None or served.pseudo_log != pseudo_log:
        return sizes
    return keep_served(served.sizes, sizes, features, "read at the fleet's size")


def engine_units(
    series: Sequence[StreamSeries],
    features: Sequence[str],
    skip: Sequence[int],
    served: ScoringConfig | None,
    tame: bool = True,
    sized: bool = True,
) -> tuple[list[StreamSeries], tuple[float, ...], tuple[float, ...]]:
    """``series`` in the units the engine will read them: through the pseudo-log of the
    heavy-tailed channels (``tame``), then each stream at the fleet's size (``sized``);
    with the pseudo-log's parts and the sizes (ScoringConfig.pseudo_log, .sizes). ``skip``:
    channels neither applies to; ``served``: a retrain keeps the served model's units."""
    scales = pseudo_log_scales(series, features, skip) if tame else ()
    scales = as_served(served, features, scales)
    series = read_through(series, scales)
    sizes = fleet_sizes(series, features, skip) if sized else ()
    sizes = sizes_as_served(served, features, sizes, scales)
    return read_sized(series, sizes), scales, sizes
