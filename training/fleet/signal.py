"""The clean signal of a simulated fleet: stream parameters, shared load, channels.

Per channel ``c`` of a stream, on nominal tick ``t``::

    x_c(t) = base_c + sigma_c * (gain_c * smooth_c(load)(t - lag_c) + noise_c(t) + wander_c(t))
    load(t) = cycle_amp * cycle(t) + AR(1) fluctuation

Arrays are (T, S, F): ticks, streams, channels. :mod:`training.fleet.styles` names the
styles and injects the anomalies.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "Params",
    "Style",
    "clean_signal",
    "make_params",
    "make_rng",
    "quantise",
    "stationary_ar1",
    "step_unit",
]

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Style:
    """How a fleet behaves; every stream of it has ``channels`` channels.

    Ranges ``(lo, hi)`` are drawn per stream (or per channel) uniformly.
    """

    name: str
    channels: int
    period_s: float = 60.0  # nominal seconds between a stream's readings
    cycle: Literal["sine", "square", "none"] = "sine"
    cycle_readings: int = 1440  # cycle period in readings
    cycle_amp: float = 1.0  # load units
    duty: tuple[float, float] = (0.3, 0.6)  # square cycle: share of the period "on"
    load_phi: float = 0.95  # AR(1) coefficient of the load's fluctuation
    load_std: float = 0.3  # its stationary std, load units
    gain: tuple[float, float] = (2.0, 8.0)  # |noise σ per load unit|; the sign is random
    smooth: tuple[float, float] = (0.0, 0.5)  # first-order filter coefficient on the load
    lag: int = 3  # max integer lag of a channel behind the load, readings
    noise: Literal["white", "ar1"] = "white"
    noise_phi: tuple[float, float] = (0.8, 0.95)  # ar1 noise coefficient
    quantised: float = 0.0  # share of channels quantised
    quantum: float = 1.0  # quantisation step, in noise σ
    wander: float = 0.0  # amplitude of the baseline's slow wander, noise σ
    wander_readings: tuple[int, int] = (3000, 8000)  # its period
    jitter: float = 0.0  # timestamp jitter, fraction of the period (< 0.5)
    drop: float = 0.0  # share of readings that never arrive
    nan: float = 0.0  # share of cells missing (NaN)


@dataclass(frozen=True, eq=False)
class Params:
    """Per stream (S,) or per channel (S, F) parameters."""

    base: F64
    sigma: F64
    gain: F64
    smooth: F64
    lag: npt.NDArray[np.int64]
    phase: F64  # (S,) cycle phase, fraction of a period
    duty: F64  # (S,)
    noise_phi: F64
    quantum: F64  # 0: not quantised
    wander_phase: F64
    wander_period: F64


def make_rng(seed: int, style: Style, part: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(style.name.encode()), part])


def make_params(st: Style, rng: np.random.Generator, s: int) -> Params:
    f = st.channels
    # A channel is one kind of sensor across the fleet: its level and noise (spanning
    # decades from channel to channel) vary by some tens of percent from stream to stream.
    level = 10 ** rng.uniform(-1, 3, f) * rng.choice([-1.0, 1.0], f, p=[0.2, 0.8])
    base = level * rng.uniform(0.7, 1.3, (s, f))
    sigma = np.abs(level) * 10 ** rng.uniform(-2.5, -1.0, f) * rng.uniform(0.8, 1.25, (s, f))
    gain = rng.uniform(*st.gain, (s, f)) * rng.choice([-1.0, 1.0], (s, f))
    noise_phi = rng.uniform(*st.noise_phi, (s, f)) if st.noise == "ar1" else np.zeros((s, f))
    quantised = rng.random((s, f)) < st.quantised
    return Params(
        base=base,
        sigma=sigma,
        gain=gain,
        smooth=rng.uniform(*st.smooth, (s, f)),
        lag=rng.integers(0, st.lag + 1, (s, f)),
        phase=rng.random(s),
        duty=rng.uniform(*st.duty, s),
        noise_phi=noise_phi,
        quantum=np.where(quantised, st.quantum * sigma, 0.0),
        wander_phase=rng.uniform(0, 2 * np.pi, (s, f)),
        wander_period=rng.uniform(*st.wander_readings, (s, f)),
    )


def _ar1(innov: F64, phi: F64 | float, y0: F64) -> F64:
    """``y[t] = phi * y[t-1] + innov[t]`` along axis 0."""
    out = np.empty_like(innov)
    y = y0
    for t in range(len(innov)):
        y = phi * y + innov[t]
        out[t] = y
    return out


def stationary_ar1(rng: np.random.Generator, shape: tuple[int, ...], phi: F64 | float) -> F64:
    """AR(1) paths of unit stationary std along axis 0, started in the stationary law."""
    scale = np.sqrt(1 - np.square(phi))
    innov = rng.standard_normal(shape) * scale
    return _ar1(innov, phi, rng.standard_normal(shape[1:]))


def cycle(st: Style, p: Params, ticks: npt.NDArray[np.int64]) -> F64:
    """(T, S) the style's cycle in [-1, 1] at integer ticks (which may be negative)."""
    frac = (ticks[:, None] / st.cycle_readings + p.phase) % 1.0
    if st.cycle == "sine":
        return np.sin(2 * np.pi * frac)
    if st.cycle == "square":
        return np.where(frac < p.duty, 1.0, -1.0)
    return np.zeros((len(ticks), len(p.phase)))


def load_terms(st: Style, p: Params, rng: np.random.Generator, n: int) -> tuple[F64, F64]:
    """(load fluctuation (T, S), each channel's load term (T, S, F)) for ticks 0..n-1."""
    lead = st.lag + 200  # lets the smoothing settle before tick 0
    ticks = np.arange(-lead, n, dtype=np.int64)
    fluct = stationary_ar1(rng, (len(ticks), len(p.phase)), st.load_phi) * st.load_std
    load = st.cycle_amp * cycle(st, p, ticks) + fluct
    smooth = _ar1((1 - p.smooth) * load[:, :, None], p.smooth, load[0][:, None])
    rows = np.arange(n)[:, None, None] + lead - p.lag[None]  # (T, S, F)
    lagged = np.take_along_axis(smooth, rows, axis=0)
    return fluct[lead:], p.gain * lagged


def clean_signal(st: Style, p: Params, rng: np.random.Generator, n: int) -> tuple[F64, F64, F64]:
    """(continuous clean values (T, S, F), load terms (T, S, F), load fluctuation (T, S))."""
    fluct, term = load_terms(st, p, rng, n)
    shape = (n, *p.base.shape)
    if st.noise == "white":
        noise = rng.standard_normal(shape)
    else:
        noise = stationary_ar1(rng, shape, p.noise_phi)
    t = np.arange(n)[:, None, None]
    wander = st.wander * np.sin(2 * np.pi * t / p.wander_period + p.wander_phase)
    return p.base + p.sigma * (term + noise + wander), term, fluct


def step_unit(x: F64) -> F64:
    """(S, F) step scale u of each channel: 1.4826 MAD of one-step differences / sqrt 2."""
    d = np.diff(x, axis=0)
    mad = np.median(np.abs(d - np.median(d, axis=0)), axis=0)
    return np.maximum(1.4826 * mad / math.sqrt(2), 1e-12)


def quantise(x: F64, quantum: F64) -> F64:
    q = np.where(quantum > 0, quantum, 1.0)
    return np.where(quantum > 0, np.round(x / q) * q, x)
