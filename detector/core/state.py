"""Per-stream recurrent state, resident on the device: one slot per live stream.

``h`` and ``c`` are preallocated ``(layers, capacity, hidden)`` tensors and ``stats`` a
``(capacity, width)`` tensor of the scorer's running statistics; a dict maps stream id to
slot and a free list hands out slots. Capacity doubles when it runs out (one copy per
doubling, never per step) up to ``max_streams``; past that the least recently seen streams
are evicted. Streams idle longer than a TTL can be evicted by :meth:`StateStore.evict_idle`.
A stream whose reading comes more than ``max_gap_ms`` after its previous one restarts from
the zero state: its old context says nothing about the present.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np
import torch
from torch import Tensor

from detector.core.incidents import Dropped, dropped

__all__ = ["Assignment", "StateStore", "StreamSnapshot"]

_NEVER = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Assignment:
    """Where one wave's streams live. Arrays are (B,) in wave order."""

    slots: np.ndarray  # int64 slot per reading
    new: np.ndarray  # bool: stream was not resident (state starts from zero)
    reset: np.ndarray  # bool: resident, but the gap since its last reading was too long
    evicted: list[str] = field(default_factory=list)  # streams evicted to make room


@dataclass(frozen=True)
class StreamSnapshot:
    """Host copies of some streams' state, for checkpoints. Shapes: (L, N, H), (N, S), (N,)."""

    stream_ids: list[str]
    h: Tensor
    c: Tensor
    stats: Tensor
    last_ts: np.ndarray
    # (N,) processing time each stream was last seen; -1 where unknown (an older record)
    last_seen: np.ndarray | None = None


class StateStore:
    """Slots of (h, c, stats) for every live stream, on ``device``.

    Examples
    --------
    >>> store = StateStore(layers=2, hidden=4, stat_width=3, max_streams=2, initial_capacity=1)
    >>> a = store.assign(["a", "b"], np.array([0, 0]), now_ms=0)
    >>> store.capacity, len(store)
    (2, 2)
    >>> store.assign(["c"], np.array([5]), now_ms=1).evicted  # full: least recent goes
    ['a']
    """

    def __init__(
        self,
        layers: int,
        hidden: int,
        stat_width: int,
        *,
        max_streams: int,
        device: torch.device | str = "cpu",
        initial_capacity: int = 1024,
        max_gap_ms: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        if initial_capacity < 1:
            raise ValueError(f"initial_capacity must be >= 1, got {initial_capacity}")
        self.layers, self.hidden, self.stat_width = layers, hidden, stat_width
        self.max_streams = max_streams
        self.max_gap_ms = max_gap_ms
        self.device = torch.device(device)
        self.dtype = dtype
        cap = min(initial_capacity, max_streams)
        self.h = torch.zeros(layers, cap, hidden, device=self.device, dtype=dtype)
        self.c = torch.zeros(layers, cap, hidden, device=self.device, dtype=dtype)
        self.stats = torch.zeros(cap, stat_width, device=self.device, dtype=dtype)
        self.last_ts = np.zeros(cap, dtype=np.int64)  # event time of the last reading
        self.last_seen = np.full(cap, _NEVER, dtype=np.int64)  # processing time; NEVER = free
        self._slot: dict[str, int] = {}
        self._ids: list[str | None] = [None] * cap
        self._free: list[int] = list(range(cap - 1, -1, -1))  # a stack: low slots first
        # The stats columns of the incident block, when the model tracks incidents: a
        # stream dropped with its incident open leaves a Dropped record (take_dropped).
        self.incident_block: slice | None = None
        self._dropped: list[Dropped] = []

    @property
    def capacity(self) -> int:
        return int(self.h.shape[1])

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._slot

    def stream_ids(self) -> list[str]:
        return list(self._slot)

    def slot_of(self, stream_id: str) -> int | None:
        return self._slot.get(stream_id)

    def live_slots(self) -> np.ndarray:
        """Slots (N,) int64 that hold a stream now."""
        return np.fromiter(self._slot.values(), np.int64, len(self._slot))

    def bytes_per_stream(self) -> int:
        """Device bytes of one slot plus host bookkeeping (arrays, map entry, id string)."""
        elem = torch.finfo(self.dtype).bits // 8
        device = (2 * self.layers * self.hidden + self.stat_width) * elem
        # Host: two int64 arrays, a dict entry (~3 words amortised), a list slot, the id
        # string (a typical 16-character id).
        host = 2 * 8 + 3 * 8 + 8 + sys.getsizeof("pump-0000000017") + 8
        return device + host

    def assign(self, stream_ids: Sequence[str], ts_ms: np.ndarray, now_ms: int) -> Assignment:
        """Slots for one wave of readings (stream ids unique within the wave).

        New streams get a zeroed slot (evicting the least recently seen ones when full);
        streams past ``max_gap_ms`` since their last reading get their state zeroed.
        """
        n = len(stream_ids)
        if n > self.max_streams:
            raise ValueError(f"a wave of {n} streams cannot fit max_streams={self.max_streams}")
        get = self._slot.get
        slots = np.fromiter(map(get, stream_ids, repeat(-1)), dtype=np.int64, count=n)
        new = slots < 0
        evicted: list[str] = []
        if new.any():
            new_idx = np.flatnonzero(new)
            evicted = self._make_room(len(new_idx), protect=slots[~new])
            fresh = self._take(len(new_idx))
            for i, slot in zip(new_idx.tolist(), fresh, strict=True):
                sid = stream_ids[i]
                self._slot[sid] = slot
                self._ids[slot] = sid
            slots[new_idx] = fresh
        # A stream's time only moves forward: one late reading (a gateway's buffer, a clock
        # reset to 2000) would otherwise make the next in-time one read as a gap (a reset,
        # and an open incident resolved by unjudged readings). The price: after a reading
        # stamped in the future, gaps are seen again once the readings pass its time.
        prev = self.last_ts[slots]
        if self.max_gap_ms is not None:
            reset = ~new & ((ts_ms - prev) > self.max_gap_ms)
        else:
            reset = np.zeros(n, dtype=bool)
        self.last_ts[slots] = np.where(new, ts_ms, np.maximum(prev, ts_ms))
        self.last_seen[slots] = now_ms
        self.restart(slots[new | reset])
        if new.any():
            self.stats[torch.from_numpy(slots[new]).to(self.device)] = 0
        return Assignment(slots=slots, new=new, reset=reset, evicted=evicted)

    def restart(self, slots: np.ndarray) -> None:
        """Zero the LSTM state of ``slots`` (a new stream's, or one back after a gap)."""
        if len(slots):
            z = torch.from_numpy(slots).to(self.device)
            self.h[:, z] = 0
            self.c[:, z] = 0

    def touch(self, stream_ids: Sequence[str], now_ms: int) -> None:
        """Mark the resident ones of ``stream_ids`` seen now: a batch split into waves must
        not evict, for an early wave's new streams, a stream that a later wave carries."""
        slots = [s for s in map(self._slot.get, stream_ids) if s is not None]
        self.last_seen[slots] = now_ms

    def evict_idle(self, now_ms: int, ttl_ms: int) -> list[str]:
        """Evict every stream not seen for more than ``ttl_ms``; returns their ids."""
        idle = np.flatnonzero((self.last_seen != _NEVER) & (self.last_seen < now_ms - ttl_ms))
        return self._release(idle, "expired")

    def evict(self, stream_ids: Sequence[str]) -> list[str]:
        """Hand the named streams over (their partition was revoked: the next owner restores
        them, open incidents included); unknown ids are ignored."""
        slots = [self._slot[s] for s in stream_ids if s in self._slot]
        return self._release(np.asarray(slots, dtype=np.int64), None)

    def drop_all(self, reason: str) -> list[str]:
        """Drop every stream (their state means nothing to the next model)."""
        return self._release(self.live_slots(), reason)

    def take_dropped(self) -> list[Dropped]:
        """Open incidents of streams dropped since the last call (each returned once)."""
        out, self._dropped = self._dropped, []
        return out

    def snapshot(self, stream_ids: Sequence[str]) -> StreamSnapshot:
        """Host copies of the named resident streams' state (unknown ids are skipped)."""
        ids = [s for s in stream_ids if s in self._slot]
        slots = np.asarray([self._slot[s] for s in ids], dtype=np.int64)
        idx = torch.from_numpy(slots).to(self.device)
        return StreamSnapshot(
            stream_ids=ids,
            h=self.h[:, idx].cpu(),
            c=self.c[:, idx].cpu(),
            stats=self.stats[idx].cpu(),
            last_ts=self.last_ts[slots].copy(),
            last_seen=self.last_seen[slots].copy(),
        )

    def restore(self, snap: StreamSnapshot, now_ms: int) -> Assignment:
        """Load a snapshot's streams into slots (replacing any resident state of theirs)."""
        a = self.assign(snap.stream_ids, snap.last_ts, now_ms)
        idx = torch.from_numpy(a.slots).to(self.device)
        self.h[:, idx] = snap.h.to(self.device, self.dtype)
        self.c[:, idx] = snap.c.to(self.device, self.dtype)
        self.stats[idx] = snap.stats.to(self.device, self.dtype)
        if snap.last_seen is not None:  # idle time survives restarts: else a worker restarted
            # more often than idle_ttl_s never expires a dead stream (nor closes its incident)
            known = snap.last_seen >= 0
            self.last_seen[a.slots[known]] = np.minimum(snap.last_seen[known], now_ms)
        return a

    # -- internals -------------------------------------------------------------------

    def _make_room(self, n_new: int, protect: np.ndarray) -> list[str]:
        over = len(self._slot) + n_new - self.max_streams
        if over <= 0:
            return []
        seen = self.last_seen.copy()
        seen[protect] = _NEVER  # this wave's resident streams stay
        victims = np.argpartition(seen, over - 1)[:over]
        return self._release(victims, "evicted")

    def close_incidents(self, reason: str) -> None:
        """Close every open incident, kept streams and all (the next model tracks none)."""
        slots = self.live_slots()
        self._close(slots, reason)
        if self.incident_block is not None and len(slots):
            with torch.inference_mode():
                self.stats[torch.from_numpy(slots).to(self.device), self.incident_block] = 0

    def _close(self, slots: np.ndarray, reason: str) -> None:
        """A :class:`Dropped` for each open incident of ``slots``."""
        if self.incident_block is not None and len(slots):
            blocks = self.stats[torch.from_numpy(slots).to(self.device), self.incident_block]
            for slot, block in zip(slots.tolist(), blocks.cpu().numpy(), strict=True):
                sid = self._ids[slot]
                d = None if sid is None else dropped(sid, reason, int(self.last_ts[slot]), block)
                if d is not None:
                    self._dropped.append(d)

    def _release(self, slots: np.ndarray, reason: str | None) -> list[str]:
        """Free ``slots``; ``reason``: their state is gone for good (None: handed over)."""
        if reason is not None:
            self._close(slots, reason)
        out: list[str] = []
        for slot in slots.tolist():
            sid = self._ids[slot]
            if sid is None:
                continue
            del self._slot[sid]
            self._ids[slot] = None
            self._free.append(slot)
            out.append(sid)
        self.last_seen[slots] = _NEVER
        return out

    def _take(self, n: int) -> list[int]:
        if len(self._free) < n:
            self._grow(self.capacity + n - len(self._free))
        taken = self._free[-n:][::-1]
        del self._free[-n:]
        return taken

    def _grow(self, at_least: int) -> None:
        old = self.capacity
        cap = min(max(2 * old, at_least), self.max_streams)

        def widen(t: Tensor, dim: int) -> Tensor:
            shape = list(t.shape)
            shape[dim] = cap
            # Normal tensors even when the engine grows the store while scoring (under
            # inference_mode): a checkpoint restore after a rebalance updates them in place.
            with torch.inference_mode(False):
                out = torch.zeros(shape, device=t.device, dtype=t.dtype)
                out.narrow(dim, 0, old).copy_(t)
            return out

        self.h, self.c = widen(self.h, 1), widen(self.c, 1)
        self.stats = widen(self.stats, 0)
        self.last_ts = np.concatenate([self.last_ts, np.zeros(cap - old, dtype=np.int64)])
        self.last_seen = np.concatenate([self.last_seen, np.full(cap - old, _NEVER, np.int64)])
        self._ids.extend([None] * (cap - old))
        self._free[:0] = range(cap - 1, old - 1, -1)  # new slots are taken after the old free
