"""The sustained rule's statistic on a replay's errors, exactly as the engine keeps it.

The trainer fits the rule's scale and threshold (``training.calibrate``) and its budget
share (``training.budget``) on these numbers, so they walk each stream's readings through
the engine's own definitions (:func:`detector.core.rules.sustained_average`,
:func:`~detector.core.rules.sustained_spread`, :func:`~detector.core.rules.sustained_spread_step`),
every stream one step at a time, started at each stream's first collected reading.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch

from detector.core.rules import (
    SustainConfig,
    sustained_average,
    sustained_spread,
    sustained_spread_step,
)

__all__ = ["sustained_averages", "sustained_statistic"]

F32 = npt.NDArray[np.float32]


class EngineRun(Protocol):
    """What is read of :class:`training.calibrate.EngineRun` (stream-major readings)."""

    @property
    def stream(self) -> npt.NDArray[np.int64]: ...
    @property
    def errors(self) -> F32: ...
    @property
    def observed(self) -> npt.NDArray[np.bool_]: ...


def _walk(run: EngineRun) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stream-major runs: each stream's first row, its length, and each row's position."""
    n = len(run.stream)
    first = np.flatnonzero(np.r_[True, run.stream[1:] != run.stream[:-1]])
    lens = np.diff(np.r_[first, n])
    return first, lens, np.arange(n) - np.repeat(first, lens)


def sustained_averages(run: EngineRun, span: int) -> tuple[F32, npt.NDArray[np.bool_]]:
    """Each reading's per-feature averages of signed errors (N, F), as the engine keeps them
    (:class:`detector.core.rules.SustainRule`), started at each stream's first collected
    reading; and which readings have a full ``span`` behind them (N,)."""
    n, f = run.errors.shape
    out = np.zeros((n, f), np.float32)
    if n == 0:
        return out, np.zeros(0, bool)
    first, lens, pos = _walk(run)
    errors, observed = torch.from_numpy(run.errors), torch.from_numpy(run.observed)
    acc = torch.zeros((len(first), f))
    for k in range(int(lens.max())):  # one step of every stream long enough
        alive = torch.from_numpy(np.flatnonzero(lens > k))
        rows = torch.from_numpy(first)[alive] + k
        acc[alive] = sustained_average(errors[rows], observed[rows], acc[alive], span)
        out[rows.numpy()] = acc[alive].numpy()
    return out, pos >= span


def sustained_statistic(
    run: EngineRun, cfg: SustainConfig, threshold: float | None = None
) -> npt.NDArray[np.float64]:
    """Each reading's ``max_f |average_f| / spread_f`` (N,), ``-inf`` before a full span:
    the fleet's ``cfg.scale`` as the spread, or with ``cfg.own`` each stream's own, kept as
    the engine keeps it (its winsorising at ``threshold``, default ``cfg.threshold``)."""
    avg, ready = sustained_averages(run, cfg.span)
    scale = np.asarray(cfg.scale, np.float32)
    if not cfg.own:
        z = (np.abs(avg) / scale).max(axis=1).astype(np.float64)
        return np.where(ready, z, -np.inf)
    n = len(avg)
    z = np.full(n, -np.inf)
    if n == 0:
        return z
    thr = cfg.threshold if threshold is None else threshold
    first, lens, _ = _walk(run)
    a, observed = torch.from_numpy(avg), torch.from_numpy(run.observed)
    s = torch.from_numpy(scale)
    count = torch.zeros((len(first), avg.shape[1]))
    ms = torch.zeros((len(first), avg.shape[1]))
    for k in range(int(lens.max())):
        alive = torch.from_numpy(np.flatnonzero(lens > k))
        rows = torch.from_numpy(first)[alive] + k
        spread = sustained_spread(s, count[alive], ms[alive])
        if k >= cfg.span:
            z[rows.numpy()] = (a[rows].abs() / spread).amax(dim=1).double().numpy()
        counted = observed[rows] & (k >= cfg.span)
        count[alive], ms[alive] = sustained_spread_step(
            a[rows], spread, thr, counted, count[alive], ms[alive]
        )
    return z
