"""A model-free rule's step walked over clean series, every stream from a cold state as live.

The shift and level rules need no model: their state follows each stream's readings
(scaler units) alone, so calibration computes their statistics from the series themselves
with the engine's own step function, all streams side by side (a stream past its end
keeps its state and its outputs are cut off).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch

from detector.core.scoring import Scaler
from training.data import StreamSeries, scaled_padded

__all__ = ["walk"]

S = TypeVar("S")
F = npt.NDArray[np.float64]


def walk(
    series: Sequence[StreamSeries],
    scaler: Scaler,
    start: Callable[[int, int], S],
    step: Callable[[S, torch.Tensor, torch.Tensor], tuple[S, torch.Tensor]],
    reads: Callable[[S, torch.Tensor], Sequence[torch.Tensor]],
) -> list[list[F]]:
    """Per output of ``reads(state after, step's output)`` (each (B, C)), per series its
    values (T, C). ``start(B, F)`` is the cold state (a dataclass of tensors), ``step(state,
    x, observed)`` the rule's step on a reading of every stream."""
    f = len(scaler.mean)
    xs, lens = scaled_padded(series, scaler.mean, scaler.std)
    if not xs.shape[1]:
        raise ValueError("no readings to walk the rule over")
    x_all = torch.from_numpy(xs)
    st = start(len(series), f)
    outs: list[F] = []
    for t in range(xs.shape[1]):  # one step of every stream: streams beyond their end idle
        x = x_all[:, t]
        nxt, out = step(st, x, ~torch.isnan(x))
        alive = torch.from_numpy(lens > t)
        st = type(st)(
            **{
                k.name: _keep(alive, getattr(nxt, k.name), getattr(st, k.name))
                for k in fields(st)  # type: ignore[arg-type]
            }
        )
        got = reads(nxt, out)
        if not outs:
            outs = [np.zeros((*xs.shape[:2], g.shape[1])) for g in got]
        for o, g in zip(outs, got, strict=True):
            o[:, t] = g.numpy()
    return [[o[i, : lens[i]] for i in range(len(series))] for o in outs]


def _keep(alive: torch.Tensor, new: Any, old: Any) -> Any:
    return torch.where(alive.view(-1, *([1] * (new.dim() - 1))), new, old)
