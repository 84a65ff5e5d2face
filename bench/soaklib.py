"""The soak's moving parts: a churning fleet, bad input, an in-process transport, trends.

:class:`ChurningFleet` is a population of sensor slots whose members come and go: the
number reporting follows a slow wave around ``max_streams`` (so the store fills and LRU
evicts at the crests, idle streams age past the TTL in the troughs), members leave at
random, and a slot that starts reporting again is either the same stream returning or a
brand-new stream id. Values come from :class:`~detector.sandbox.simulation.Fleet`.

:class:`SoakTransport` is the worker's transport, fed by the driver. Unlike
:class:`~detector.kafka.memory.MemoryTransport`, which keeps every message for tests to
inspect, it drops each record once polled and counts what is sent, so a long soak
measures the worker's memory, not the harness's.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import orjson

from detector.kafka.transport import Headers, RebalanceCallback, Record, TopicPartition
from detector.sandbox.simulation import Fleet, FleetSpec

__all__ = ["FEATURES", "ChurningFleet", "SoakTransport", "Trend", "bad_messages", "trend"]

FEATURES = ("temp", "vibration", "pressure", "current")
Message = tuple[int, bytes | None, bytes]  # (partition, key, value)


class ChurningFleet:
    """Readings of a fleet whose members appear, go idle, return and are replaced.

    ``population`` slots; about ``max_streams`` of them report each tick, following a
    wave of ±50 % over ``wave_ticks``. Each tick a reporting stream leaves with
    probability ``leave_p``; a slot that joins gets a new stream id with probability
    ``fresh_p``, else its old stream returns.
    """

    def __init__(
        self,
        max_streams: int,
        population: int,
        partitions: int,
        tick_s: float,
        seed: int = 0,
        wave_ticks: int = 720,
        leave_p: float = 0.03,
        fresh_p: float = 0.5,
    ) -> None:
        # No injected anomalies: the simulator keeps every anomaly's label, which would grow
        # this process's memory; the untrained model alerts anyway.
        spec = FleetSpec(
            streams=population, features=FEATURES, period_s=tick_s, seed=seed, anomaly_rate=0
        )
        self.fleet = Fleet(spec)
        self.max_streams, self.partitions, self.wave_ticks = max_streams, partitions, wave_ticks
        self.leave_p, self.fresh_p = leave_p, fresh_p
        self.rng = np.random.default_rng([seed, 7])
        self.active = np.zeros(population, dtype=bool)
        self.gen = np.zeros(population, dtype=np.int64)  # bumped: the slot's next id is new
        self.seen = np.zeros(population, dtype=bool)  # the slot's current id has reported
        self.appeared = self.returned = 0

    @property
    def tick(self) -> int:
        return self.fleet.tick

    @property
    def now_ms(self) -> int:
        """Event time at the end of the last tick generated (the worker's clock)."""
        s = self.fleet.spec
        return s.start_ms + self.fleet.tick * s.period_ms

    def target(self) -> int:
        """Streams that should report this tick."""
        wave = math.sin(2 * math.pi * self.tick / self.wave_ticks)
        return max(1, round(self.max_streams * (1 + 0.5 * wave)))

    def step(self) -> list[Message]:
        """One tick: churn the membership, then one reading per reporting stream."""
        self._churn()
        block = self.fleet.step(1)
        slots = np.flatnonzero(self.active)
        self.appeared += int((~self.seen[slots]).sum())
        self.seen[slots] = True
        ts, values = block.ts_ms[0].tolist(), block.values[0].tolist()  # (S,), (S, F)
        out: list[Message] = []
        for s in slots.tolist():
            sid = f"s{s:06d}.{self.gen[s]}"
            doc = {"stream_id": sid, "ts": ts[s], "values": values[s]}
            out.append((s % self.partitions, sid.encode(), orjson.dumps(doc)))
        return out

    def _churn(self) -> None:
        n_slots, rng = len(self.active), self.rng
        self.active &= rng.random(n_slots) >= self.leave_p
        on, want = np.flatnonzero(self.active), self.target()
        if len(on) > want:
            self.active[rng.choice(on, len(on) - want, replace=False)] = False
        elif len(on) < want:
            off = np.flatnonzero(~self.active)
            joining = rng.choice(off, min(len(off), want - len(on)), replace=False)
            fresh = joining[rng.random(len(joining)) < self.fresh_p]
            self.gen[fresh] += 1
            self.seen[fresh] = False
            self.returned += int(self.seen[joining].sum())
            self.active[joining] = True


def bad_messages(n: int, rng: np.random.Generator, partitions: int) -> list[Message]:
    """``n`` messages the decoder must refuse, of every kind, none repeating another.

    One in 500 (at least one per call) is 1 MB, past the decoder's size limit.
    """
    out: list[Message] = []
    for i in range(n):
        u = int(rng.integers(1 << 62))  # unique ids: a per-id leak in the refusal path shows
        sid, kind = f"bad-{u:x}", i % 12
        doc: object
        if kind == 0:
            value = b"{not json " + rng.bytes(16).hex().encode()
        elif kind == 1:
            value = rng.bytes(int(rng.integers(1, 200)))  # random bytes: never valid JSON here
            value = b"\xff" + value
        elif kind == 2:
            value = b"[]"
        else:
            doc = [
                {"ts": 1, "values": [1, 2, 3, 4]},  # missing_stream_id
                {"stream_id": u, "ts": 1, "values": [1, 2, 3, 4]},  # bad_stream_id
                {"stream_id": "x" * 300 + sid, "ts": 1, "values": [1, 2, 3, 4]},
                {"stream_id": sid, "ts": "noon", "values": [1, 2, 3, 4]},  # bad_ts
                {"stream_id": sid, "ts": -u, "values": [1, 2, 3, 4]},
                {"stream_id": sid, "ts": 1},  # missing_values
                {"stream_id": sid, "ts": 1, "values": {"rpm": u}},  # unknown_feature
                {"stream_id": sid, "ts": 1, "values": [1, 2]},  # wrong_feature_count
                {"stream_id": sid, "ts": 1, "values": [1, "x", 3, 4]},  # non_numeric
            ][kind - 3]
            value = orjson.dumps(doc)
        # No key on the message without a stream id: the key would stand in for it.
        out.append((i % partitions, None if kind == 3 else sid.encode(), value))
    if n:
        out[int(rng.integers(n))] = (0, b"big", b"x" * 1_020_000)
    return out


class SoakTransport:
    """The worker's transport, in process: the driver produces, polled records are dropped.

    Partitions are polled in turn, a share of ``max_records`` each, so none starves.
    Sends are counted per topic (messages and bytes) and dropped at ``flush``.
    """

    def __init__(self, topic: str, partitions: int) -> None:
        self.topic = topic
        self.queues: list[deque[Record]] = [deque() for _ in range(partitions)]
        self.ends = [0] * partitions
        self.committed: dict[TopicPartition, int] = {}
        self.sent: Counter[str] = Counter()
        self.sent_bytes: Counter[str] = Counter()
        self._unacked: list[tuple[str, int]] = []
        self._callbacks: tuple[RebalanceCallback, RebalanceCallback] | None = None
        self._assigned = False

    @property
    def backlog(self) -> int:
        return sum(len(q) for q in self.queues)

    def produce(self, messages: list[Message]) -> None:
        for p, key, value in messages:
            self.queues[p].append(Record(self.topic, p, self.ends[p], key, value))
            self.ends[p] += 1

    def subscribe(
        self, topic: str, on_assigned: RebalanceCallback, on_revoked: RebalanceCallback
    ) -> None:
        assert topic == self.topic, f"the soak feeds {self.topic!r}, not {topic!r}"
        self._callbacks = (on_assigned, on_revoked)

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        if not self._assigned:  # the group's first rebalance, inside poll as Kafka does it
            assert self._callbacks is not None, "subscribe() first"
            self._assigned = True
            self._callbacks[0]([TopicPartition(self.topic, p) for p in range(len(self.queues))])
        share = -(-max_records // len(self.queues))
        out: list[Record] = []
        for q in self.queues:
            for _ in range(min(share, len(q), max_records - len(out))):
                out.append(q.popleft())
        return out

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        for tp, o in offsets.items():
            assert o <= self.ends[tp.partition], f"commit {o} past the end of {tp}"
        self.committed.update(offsets)

    def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = ()
    ) -> None:
        self._unacked.append((topic, len(value or b"")))

    def flush(self) -> None:
        for topic, size in self._unacked:
            self.sent[topic] += 1
            self.sent_bytes[topic] += size
        self._unacked.clear()

    def lag(self, tp: TopicPartition) -> int | None:
        return len(self.queues[tp.partition])

    def close(self) -> None:
        self._callbacks = None


@dataclass(frozen=True)
class Trend:
    """A least-squares line through samples; per-minute units.

    ``drift`` is the line's rise over the window; it is *within noise* when no larger
    than twice the samples' scatter around the line, or under 0.1 % of the level (the
    tiny steps of an otherwise flat series: a page of RSS, a digit more in a checkpoint).
    """

    level: float  # mean over the window
    slope_per_min: float
    slope_stderr_per_min: float
    drift: float  # slope × window length
    drift_pct: float  # drift relative to the level
    scatter: float  # standard deviation of the residuals
    within_noise: bool
    max: float

    def as_json(self, digits: int = 3) -> dict[str, float | bool]:
        return {k: v if isinstance(v, bool) else round(v, digits) for k, v in asdict(self).items()}


def trend(minutes: list[float], values: list[float]) -> Trend | None:
    """The trend of ``values`` sampled at ``minutes``; ``None`` with fewer than 3 samples."""
    x, y = np.asarray(minutes, np.float64), np.asarray(values, np.float64)
    keep = np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3:
        return None
    xc = x - x.mean()
    sxx = float((xc**2).sum())
    slope = float((xc * (y - y.mean())).sum() / sxx) if sxx else 0.0
    resid = y - y.mean() - slope * xc
    scatter = float(np.sqrt((resid**2).sum() / (len(x) - 2)))
    stderr = scatter / math.sqrt(sxx) if sxx else 0.0
    drift = slope * float(x[-1] - x[0])
    level = float(y.mean())
    return Trend(
        level=level,
        slope_per_min=slope,
        slope_stderr_per_min=stderr,
        drift=drift,
        drift_pct=100 * drift / level if level else 0.0,
        scatter=scatter,
        within_noise=abs(drift) <= max(2 * scatter, 1e-3 * abs(level)),
        max=float(y.max()),
    )
