"""Synthetic sensor fleet with injected, labelled anomalies (pure core of `anomalyd simulate`).

Every stream is driven by a latent *load*: a daily cycle plus an AR(1) fluctuation. Each
channel follows the load through its own lag (an exponential filter), gain and noise, so
channels are correlated with each other through the load. Anomalies are injected on top of
that clean signal with magnitudes in units of the channel's *normal one-step variation*:
its noise and the part of the load's innovation it passes on, together — what even a
perfect forecaster of the channel cannot predict one reading ahead (a jump of the size the
channel moves every minute is not an anomaly to anyone who watches it); a ``broken_correlation``
keeps the channel in its normal range but decouples it from the load, so only a
multivariate model can see it.

Randomness comes from independent sources derived from ``FleetSpec.seed``: stream
parameters, the noise of the clean signal, and the anomalies (one generator per anomaly). Hence the
clean signal does not depend on ``anomaly_rate`` (a clean fleet equals the anomalous one
outside the labelled intervals), and the data do not depend on how ticks are split into
blocks (up to float rounding of the lag filters).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from detector.sandbox.signals import ar_filter, powers

__all__ = [
    "ANOMALY_KINDS",
    "Anomaly",
    "Block",
    "Fleet",
    "FleetSpec",
]

F64 = npt.NDArray[np.float64]
# kind -> (min, max) duration in readings.
_DURATIONS = {
    "spike": (1, 1),
    "level_shift": (20, 60),
    "drift": (30, 120),
    "stuck": (30, 90),
    "noise_burst": (20, 60),
    "broken_correlation": (60, 180),
}
ANOMALY_KINDS: tuple[str, ...] = tuple(_DURATIONS)
# role -> (base lo, hi), (gain lo, hi), (lag lo, hi), noise σ as a fraction of |gain|.
# Unknown feature names take the roles in this order, cyclically.
_ROLES: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float], float]] = {
    "temp": ((55.0, 75.0), (6.0, 10.0), (0.75, 0.9), 0.05),
    "vibration": ((0.06, 0.1), (0.01, 0.02), (0.2, 0.3), 0.8),
    "pressure": ((2.5, 4.0), (-0.6, -0.3), (0.2, 0.4), 0.12),
    "current": ((15.0, 30.0), (4.0, 8.0), (0.2, 0.25), 0.04),
}
_DAY_MS = 86_400_000
_MIN_GAP = 20  # readings between two anomalies of a stream, so they stay separable


@dataclass(frozen=True)
class FleetSpec:
    """What to simulate: fleet size, channels, cadence, anomalies and the seed.

    Parameters
    ----------
    streams : int
        Number of sensor streams; ids are ``prefix`` + a zero-padded index (``pump-00017``).
    features : tuple of str
        Channel names. ``temp``, ``vibration``, ``pressure`` and ``current`` have their own
        behaviour; other names take those behaviours in that order, cyclically.
    period_s : float
        Seconds between two readings of a stream; streams are staggered within a period.
    anomaly_rate : float
        Approximate anomalies per stream per 1000 readings; 0 gives clean training data.
    anomaly_kinds : tuple of str
        Kinds to inject, a subset of `ANOMALY_KINDS`.
    seed : int
        Seeds everything; the same seed gives the same streams and the same data.
    start_ms : int
        Epoch milliseconds of tick 0.
    prefix : str
        Stream id prefix.
    warmup_ticks : int
        No anomaly starts in a fleet's first ``warmup_ticks`` ticks, so detectors can warm up.
    """

    streams: int = 100
    features: tuple[str, ...] = ("temp", "vibration", "pressure", "current")
    period_s: float = 60.0
    anomaly_rate: float = 2.0
    anomaly_kinds: tuple[str, ...] = ANOMALY_KINDS
    seed: int = 0
    start_ms: int = 1_795_219_200_000  # 2026-11-21T00:00:00Z
    prefix: str = "pump-"
    warmup_ticks: int = 200

    def __post_init__(self) -> None:
        if self.streams < 1:
            raise ValueError(f"streams must be >= 1, got {self.streams}")
        if not self.features or len(set(self.features)) != len(self.features):
            raise ValueError(f"features must be non-empty and unique, got {self.features}")
        if round(self.period_s * 1000) < 1:
            raise ValueError(f"period_s must be at least 0.001, got {self.period_s}")
        if not 0 <= self.anomaly_rate < 1000 / (_MIN_GAP + 1):
            raise ValueError(f"anomaly_rate must be in [0, 47] per 1000, got {self.anomaly_rate}")
        unknown = set(self.anomaly_kinds) - set(ANOMALY_KINDS)
        if unknown or not self.anomaly_kinds:
            raise ValueError(f"anomaly_kinds must be a non-empty subset of {ANOMALY_KINDS}")
        if self.seed < 0 or self.warmup_ticks < 0:
            raise ValueError("seed and warmup_ticks must be >= 0")

    @property
    def period_ms(self) -> int:
        return round(self.period_s * 1000)

    @property
    def readings_per_s(self) -> float:
        """Fleet-wide reading rate at real-time pace."""
        return self.streams / self.period_s

    def clean(self) -> FleetSpec:
        """The same fleet without anomalies (training data)."""
        return replace(self, anomaly_rate=0.0)

    def stream_id(self, index: int) -> str:
        return f"{self.prefix}{index:0{max(5, len(str(self.streams - 1)))}d}"


@dataclass(frozen=True)
class Anomaly:
    """One injected anomaly: readings of ``stream_id`` with ``start_ms <= ts <= end_ms``."""

    stream_id: str
    kind: str
    start_ms: int
    end_ms: int
    features: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Block:
    """Consecutive ticks of the whole fleet; row-major order ``(tick, stream)`` is time order.

    Streams report staggered within a period, so ``ts_ms`` never decreases along that order.
    """

    first_tick: int
    stream_ids: tuple[str, ...]  # (S,)
    features: tuple[str, ...]  # (F,)
    ts_ms: npt.NDArray[np.int64]  # (T, S)
    values: F64  # (T, S, F)
    load: F64  # (T, S) latent load driving the channels
    expected: F64  # (T, S, F) noise-free signal of a healthy sensor (an oracle's forecast)
    anomalous: npt.NDArray[np.bool_]  # (T, S) True inside an injected anomaly

    @property
    def n_readings(self) -> int:
        return int(self.ts_ms.size)

    def flat(self) -> tuple[list[str], npt.NDArray[np.int64], F64]:
        """Readings in time order as `Engine.process` takes them: ids, ts (N,), values (N, F)."""
        ids = list(self.stream_ids) * len(self.ts_ms)
        return ids, self.ts_ms.ravel(), self.values.reshape(-1, len(self.features))


@dataclass(eq=False)
class _Injection:
    label: Anomaly
    stream: int
    start: int  # first tick
    end: int  # last tick, inclusive
    channels: npt.NDArray[np.intp]  # (k,)
    delta: F64 | None = None  # (duration, k) additive kinds
    factor: float = 1.0  # noise_burst
    fake: F64 | None = None  # (duration,) broken_correlation: load the channel follows
    held: F64 | None = None  # (k,) stuck value / lagged load at start


class Fleet:
    """Deterministic generator of a fleet's readings, advancing block by block.

    Parameters
    ----------
    spec : FleetSpec
        What to simulate.
    start_tick : int
        Tick to start at. The same spec with a later ``start_tick`` gives a held-out
        continuation: the same streams (levels, gains, phases, noise) with fresh noise.

    Examples
    --------
    >>> fleet = Fleet(FleetSpec(streams=3, seed=7))
    >>> block = fleet.step(10)
    >>> block.values.shape  # (ticks, streams, features)
    (10, 3, 4)
    >>> block.stream_ids[0], int(block.ts_ms[1, 0] - block.ts_ms[0, 0])
    ('pump-00000', 60000)
    >>> fleet.anomalies  # none during the warm-up
    []
    """

    def __init__(self, spec: FleetSpec, start_tick: int = 0) -> None:
        if start_tick < 0:
            raise ValueError(f"start_tick must be >= 0, got {start_tick}")
        self.spec = spec
        self.start_tick = start_tick
        self.stream_ids = tuple(spec.stream_id(i) for i in range(spec.streams))
        self._tick = start_tick
        n, f = spec.streams, len(spec.features)
        p = np.random.default_rng([spec.seed, 0])  # stream parameters: shared by segments
        self._offset_ms = (np.arange(n, dtype=np.int64) * spec.period_ms) // n  # (S,)
        self._phase = p.uniform(0, 2 * np.pi, n)
        self._amp = p.uniform(0.5, 1.0, n)
        self._phi = p.uniform(0.9, 0.98, n)
        self._ar_std = p.uniform(0.3, 0.5, n)
        roles = [
            _ROLES.get(name, _ROLES[list(_ROLES)[j % len(_ROLES)]])
            for j, name in enumerate(spec.features)
        ]
        col = np.array([[*r[0], *r[1], *r[2], r[3]] for r in roles]).T  # (7, F)
        u = p.uniform(0, 1, (4, n, f))
        self._base = col[0] + u[0] * (col[1] - col[0])  # (S, F)
        self._gain = col[2] + u[1] * (col[3] - col[2])
        self._lag = col[4] + u[2] * (col[5] - col[4])
        self._sigma = np.abs(self._gain) * col[6] * (0.8 + 0.4 * u[3])
        # One-step unpredictable variation per channel: noise plus the load's AR(1)
        # innovation passed through the channel's lag and gain. The unit of anomaly sizes.
        innov = self._ar_std * np.sqrt(1 - self._phi**2)  # (S,)
        self._step_sigma = np.sqrt(
            self._sigma**2 + (self._gain * (1 - self._lag) * innov[:, None]) ** 2
        )
        # Filter chunks: <= 128 ticks (lags >= 0.2, so 0.2**-128 is finite), <= 16 MiB of powers.
        chunk = max(1, min(128, 2**21 // (n * f)))
        self._ar_powers = powers(self._phi, chunk)  # (chunk, S)
        self._lag_powers = powers(self._lag, chunk)  # (chunk, S, F)
        # Channels that follow the load closely enough for a broken correlation to show.
        fast = np.flatnonzero((col[6] < 0.3) & (col[5] < 0.5))
        self._corr_pool = fast if fast.size else np.arange(f)

        self._rng = np.random.default_rng([spec.seed, 1, start_tick])  # clean-signal noise
        self._ar = self._rng.standard_normal(n) * self._ar_std
        self._lagged = np.broadcast_to((1.0 + self._ar)[:, None], (n, f)).copy()
        self._ordinal = np.zeros(n, dtype=np.int64)
        self._pcg = np.random.PCG64(0)
        self._anomaly_gen = np.random.Generator(self._pcg)
        self._active: list[_Injection] = []
        self._labels: list[Anomaly] = []
        kinds = spec.anomaly_kinds
        mean_dur = float(np.mean([sum(_DURATIONS[k]) / 2 for k in kinds]))
        self._gap_p = 0.0
        if spec.anomaly_rate > 0:
            self._gap_p = 1 / max(1000 / spec.anomaly_rate - mean_dur - _MIN_GAP, 1.0)
            first = np.random.default_rng([spec.seed, 2, start_tick]).geometric(self._gap_p, n)
            self._next = start_tick + spec.warmup_ticks + first - 1
        else:
            self._next = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)

    @property
    def step_sigma(self) -> F64:
        """(S, F) one-step unpredictable σ of each channel: the unit of anomaly sizes."""
        out: F64 = self._step_sigma.copy()
        return out

    @property
    def tick(self) -> int:
        """The next tick to generate."""
        return self._tick

    @property
    def anomalies(self) -> list[Anomaly]:
        """Anomalies started so far, by start time; intervals may reach past the last block."""
        return sorted(self._labels, key=lambda a: (a.start_ms, a.stream_id))

    def step(self, n_ticks: int) -> Block:
        """Generate the next ``n_ticks`` ticks of every stream."""
        if n_ticks < 1:
            raise ValueError(f"n_ticks must be >= 1, got {n_ticks}")
        spec, t0, t1 = self.spec, self._tick, self._tick + n_ticks
        eps = self._rng.standard_normal((n_ticks, spec.streams, len(spec.features) + 1))
        ticks = np.arange(t0, t1, dtype=np.int64)
        ts = spec.start_ms + ticks[:, None] * spec.period_ms + self._offset_ms  # (T, S)
        angle = (ts % _DAY_MS) * (2 * np.pi / _DAY_MS) + self._phase
        innov = eps[:, :, 0] * (self._ar_std * np.sqrt(1 - self._phi**2))
        ar = ar_filter(innov, self._ar_powers, self._ar)  # (T, S)
        load = 1.0 + self._amp * np.sin(angle) + ar
        lagged = ar_filter((1 - self._lag) * load[:, :, None], self._lag_powers, self._lagged)
        noise = eps[:, :, 1:] * self._sigma  # (T, S, F)
        expected = self._base + self._gain * (lagged - 1.0)
        values = expected + noise
        self._ar, self._lagged = ar[-1].copy(), lagged[-1].copy()

        while (due := np.flatnonzero(self._next < t1)).size:
            for s in due:
                self._schedule(int(s))
        anomalous = np.zeros((n_ticks, spec.streams), dtype=bool)
        for inj in self._active:
            lo, hi = max(inj.start, t0), min(inj.end + 1, t1)
            if lo < hi:
                self._apply(inj, lo - t0, hi - t0, lo - inj.start, values, lagged, noise)
                anomalous[lo - t0 : hi - t0, inj.stream] = True
        self._active = [inj for inj in self._active if inj.end >= t1]
        self._tick = t1
        return Block(t0, self.stream_ids, spec.features, ts, values, load, expected, anomalous)

    def blocks(self, ticks: int, block_ticks: int = 256) -> Iterator[Block]:
        """Generate ``ticks`` ticks as blocks of at most ``block_ticks``."""
        end = self._tick + ticks
        while self._tick < end:
            yield self.step(min(block_ticks, end - self._tick))

    def _anomaly_rng(self, stream: int, ordinal: int) -> np.random.Generator:
        """Generator of one anomaly, keyed by (stream, ordinal): block splits change nothing.

        Reseeds one PCG64 through a hash: 7x cheaper than a SeedSequence per anomaly.
        """
        key = struct.pack("<4q", self.spec.seed, self.start_tick, stream, ordinal)
        state = int.from_bytes(hashlib.blake2b(key, digest_size=16).digest(), "little")
        self._pcg.state = {
            "bit_generator": "PCG64",
            "state": {"state": state, "inc": 0xDA3E39CB94B95BDB},
            "has_uint32": 0,
            "uinteger": 0,
        }
        return self._anomaly_gen

    def _schedule(self, s: int) -> None:
        spec, f = self.spec, len(self.spec.features)
        rng = self._anomaly_rng(s, int(self._ordinal[s]))
        self._ordinal[s] += 1
        u = rng.random(9).tolist()  # one draw, then Python scalars: per-call overhead dominates
        kind = spec.anomaly_kinds[int(u[0] * len(spec.anomaly_kinds))]
        lo, hi = _DURATIONS[kind]
        start, dur = int(self._next[s]), lo + int(u[1] * (hi - lo + 1))
        pool = list(self._corr_pool) if kind == "broken_correlation" else list(range(f))
        k = 1 if kind in ("drift", "stuck", "broken_correlation") else 1 + int(u[2] * 2)
        picked = [pool.pop(int(u[3 + i] * len(pool))) for i in range(min(k, len(pool)))]
        picked.sort()
        ch = np.array(picked)
        row = self._step_sigma[s].tolist()
        # (k,) one-step σ of the channels, signed: each channel goes up or down.
        sigma = np.array([row[c] if u[5 + i] < 0.5 else -row[c] for i, c in enumerate(picked)])
        first_ms = spec.start_ms + int(self._offset_ms[s]) + spec.period_ms * start
        label = Anomaly(
            self.stream_ids[s],
            kind,
            first_ms,
            first_ms + spec.period_ms * (dur - 1),
            tuple(spec.features[c] for c in picked),
        )
        inj = _Injection(label, s, start, start + dur - 1, ch)
        if kind == "spike":
            inj.delta = ((6 + 4 * u[7]) * sigma)[None, :]
        elif kind == "level_shift":
            inj.delta = np.repeat(((4 + 2 * u[7]) * sigma)[None, :], dur, axis=0)
        elif kind == "drift":
            inj.delta = np.outer(np.arange(1, dur + 1) / dur, (6 + 2 * u[7]) * sigma)
        elif kind == "noise_burst":
            inj.factor = 5 + 3 * u[7]
        elif kind == "broken_correlation":
            phi, std = self._phi[s : s + 1], self._ar_std[s]
            innov = rng.standard_normal((dur, 1)) * (std * np.sqrt(1 - phi**2))
            inj.fake = ar_filter(innov, powers(phi, dur), np.zeros(1))[:, 0]
        self._active.append(inj)
        self._labels.append(label)
        gap = 1
        if self._gap_p < 1:  # geometric by inversion
            gap = max(1, math.ceil(math.log1p(-u[8]) / math.log1p(-self._gap_p)))
        self._next[s] = start + dur + _MIN_GAP + gap

    def _apply(
        self, inj: _Injection, r0: int, r1: int, o0: int, values: F64, lagged: F64, noise: F64
    ) -> None:
        rows, s, ch = slice(r0, r1), inj.stream, inj.channels
        offs = slice(o0, o0 + r1 - r0)
        view = values[rows, s][:, ch]  # (n, k) copy
        kind = inj.label.kind
        if inj.delta is not None:
            view += inj.delta[offs]
        elif kind == "noise_burst":
            view += (inj.factor - 1.0) * noise[rows, s][:, ch]
        elif kind == "stuck":
            if inj.held is None:  # first application covers the start tick
                inj.held = view[0].copy()
            view[:] = inj.held
        elif kind == "broken_correlation":
            assert inj.fake is not None
            lag = lagged[rows, s][:, ch]
            if inj.held is None:
                inj.held = lag[0].copy()
            # Replace the load the channel follows by an unrelated one of the same scale.
            view += self._gain[s, ch] * (inj.held + inj.fake[offs, None] - lag)
        values[rows, s, ch] = view
