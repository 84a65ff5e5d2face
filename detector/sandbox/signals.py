"""Vectorised AR(1) filtering for the simulators: ``y[t] = a * y[t-1] + x[t]``."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["ar_filter", "powers"]

F64 = npt.NDArray[np.float64]


def powers(a: F64, n: int) -> F64:
    """``a**1 .. a**n`` stacked on a new leading axis: (n, *a.shape)."""
    return a ** np.arange(1, n + 1).reshape((-1,) + (1,) * a.ndim)


def ar_filter(x: F64, powers: F64, y0: F64) -> F64:
    """``y[t] = a * y[t-1] + x[t]`` along axis 0; ``x`` (T, *s), ``y0`` (*s).

    ``powers`` is ``powers(a, chunk)``: the closed form ``a^t (y0 + sum_k a^-k x_k)`` runs
    vectorised over chunks of that many ticks, short enough that ``a^-chunk`` stays finite.
    """
    out = np.empty_like(x)
    chunk = len(powers)
    for c0 in range(0, len(x), chunk):
        xc = x[c0 : c0 + chunk]
        pw = powers[: len(xc)]
        out[c0 : c0 + len(xc)] = pw * (y0 + np.cumsum(xc / pw, axis=0))
        y0 = out[c0 + len(xc) - 1]
    return out
