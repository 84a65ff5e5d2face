"""State checkpoints: each stream's state made durable between batches, restored on assignment.

The worker calls a checkpointer at five points: ``mark_dirty`` (streams a batch touched),
``mark_gone`` (streams evicted, while the tracker still knows their partition),
``after_flush`` (every alert of a batch acknowledged, offsets not yet committed; returns the
offsets that may be committed now), ``on_revoked`` (partitions leaving, before the worker
forgets them) and ``on_assigned`` (partitions arriving, before any of their records is
processed; returns what was restored and which records the restored state already
reflects). It reads the engine's store and the worker's
:class:`~detector.kafka.partitions.PartitionTracker` (which partition each stream is filed
under), never the worker.

The invariant: a committed offset never runs ahead of the durable state. A checkpoint is
written at most every ``state.interval_s`` seconds (sooner when the worker goes idle);
batches in between are flushed but *not committed*: ``after_flush`` returns nothing until
the next checkpoint, which then releases every offset it covers. Records the durable state
already reflects are skipped after a restore (their alerts went out before the checkpoint
was written), so a restart neither loses nor double-applies a reading.

Record layout (see :mod:`detector.checkpointing.codec`): one record per stream, keyed by the
stream id, plus one *mark* per source partition carrying the offset below which everything
is reflected. Where they go is a store's business (:mod:`detector.checkpointing.stores`):
a compacted topic, or one file per partition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from detector.checkpointing.codec import (
    CheckpointError,
    PartitionMark,
    StateShape,
    StreamState,
    encode_streams,
    restorable,
)
from detector.config import Settings
from detector.core.engine import Engine
from detector.core.state import StreamSnapshot
from detector.kafka.partitions import PartitionTracker
from detector.kafka.transport import Offsets, TopicPartition
from detector.memory import release_free_heap
from detector.observability.metrics import Metrics

__all__ = ["CheckpointError", "Checkpointer", "Restored"]

log = logging.getLogger("anomalyd.checkpoint")
_RESTORE_CHUNK = 4096  # streams per restore call: bounds the host copies


@dataclass
class Restored:
    """What ``on_assigned`` restored, and what the worker must skip because of it."""

    partition_floors: dict[TopicPartition, int] = field(default_factory=dict)
    stream_floors: dict[str, int] = field(default_factory=dict)  # streams ahead of their mark
    partitions: dict[str, int] = field(default_factory=dict)  # restored stream -> partition
    evicted: list[str] = field(default_factory=list)  # evicted to make room for restored ones
    refused: int = 0  # records of another model shape: those streams start afresh


class Checkpointer:
    """Dirty set, pending offsets and the interval; subclasses say where state goes.

    ``engine`` is the one the worker serves (a model swap keeps the object);
    ``partitions`` says which source partition each resident stream is filed under.
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        partitions: PartitionTracker,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.s = settings
        self.engine = engine
        self.partitions = partitions
        self.metrics = metrics or Metrics()
        self._clock = clock
        self._now = monotonic
        self._dirty: set[str] = set()
        self._pending: Offsets = {}
        self._unsent: Offsets = {}  # checkpointed in a revocation, not committed yet
        self._last = -float("inf")  # the first batch is checkpointed at once

    def mark_dirty(self, stream_ids: Iterable[str]) -> None:
        self._dirty.update(stream_ids)

    def mark_gone(self, stream_ids: Iterable[str]) -> None:
        """Streams evicted: the next checkpoint drops their records. Called while the
        tracker still files them under their partition."""
        self._dirty.update(stream_ids)

    def after_flush(self, offsets: Offsets, idle: bool = False) -> Offsets:
        """Offsets that may be committed now: those of a checkpoint just written, or none."""
        self._pending.update(offsets)
        if not idle and self._now() - self._last < self.s.state.interval_s:
            return {}
        return self.checkpoint()

    def checkpoint(self) -> Offsets:
        """Write what changed since the last checkpoint; returns the offsets it covers."""
        if not self._pending and not self._dirty:
            return {}
        n = self._write(self._dirty, self._pending)
        self.metrics.checkpoint_bytes.set(n)
        self.metrics.checkpoint_written()
        done, self._pending, self._dirty = self._pending, {}, set()
        self._last = self._now()
        release_free_heap()  # what the streams evicted since the last one freed (glibc)
        return done

    def on_revoked(self) -> None:
        """Checkpoint now, while the tracker still files the leaving streams."""
        # The next owner restores from this checkpoint and skips what it reflects, so the
        # offsets need no commit here (kafka-python forbids a blocking commit inside the
        # rebalance callback anyway). Kept in case the partitions come back to us.
        self._unsent.update(self.checkpoint())

    def on_assigned(self, assigned: list[TopicPartition]) -> Restored:
        eng = self.engine
        # Ours again: commit them with the next checkpoint (the consumer may resume past
        # them, leaving no record whose commit would carry them). Others' are theirs now.
        self._pending.update({tp: o for tp, o in self._unsent.items() if tp in assigned})
        self._unsent.clear()
        parts = {(tp.topic, tp.partition) for tp in assigned}
        marks, states = self._load(parts)
        out = Restored()
        for m in marks:
            out.partition_floors[TopicPartition(m.topic, m.partition)] = m.offset
        floor = {(m.topic, m.partition): m.offset for m in marks}
        shape = StateShape.of(eng.bundle, eng.store.stat_width)
        ok = restorable(states, shape)  # a refusal of another layout is logged
        out.refused = len(states) - len(ok)
        cap = eng.store.max_streams
        if len(ok) > cap:  # as LRU would: the most recently active fit, the rest start afresh
            log.warning("restoring %d of %d streams: engine.max_streams=%d", cap, len(ok), cap)
            ok = sorted(ok, key=lambda st: st.last_ts)[-cap:]
        now_ms = int(self._clock() * 1000)
        for i in range(0, len(ok), _RESTORE_CHUNK):
            chunk = ok[i : i + _RESTORE_CHUNK]
            a = eng.store.restore(_snapshot(chunk, shape), now_ms)
            out.evicted += a.evicted
        for st in ok:
            out.partitions[st.stream_id] = st.partition
            if st.offset > floor.get((st.topic, st.partition), -1):
                out.stream_floors[st.stream_id] = st.offset
        self.mark_gone(out.evicted)
        log.info(
            "restored %d streams of partitions %s (%d refused: another model shape, context "
            "or held channels)",
            len(ok),
            sorted(p for _, p in parts),
            out.refused,
        )
        return out

    def close(self) -> None:
        """Release what the store holds open."""

    # -- the store -------------------------------------------------------------------

    def _write(self, dirty: set[str], pending: Offsets) -> int:
        raise NotImplementedError

    def _load(self, parts: set[tuple[str, int]]) -> tuple[list[PartitionMark], list[StreamState]]:
        raise NotImplementedError

    def _encode_resident(self, ids: Iterable[str], pending: Offsets) -> Iterator[tuple[str, bytes]]:
        """(stream id, record) of the named resident streams, tagged with their offsets."""
        eng = self.engine
        snap = eng.store.snapshot(list(ids))
        if not snap.stream_ids:
            return
        topic = self.s.topics.readings
        parts = [self.partitions.partition_of(s) for s in snap.stream_ids]
        offs = [pending.get(TopicPartition(topic, p), -1) for p in parts]
        b = eng.bundle
        values = encode_streams(
            StateShape.of(b, eng.store.stat_width), b.name, b.version, topic, snap, parts, offs
        )
        yield from zip(snap.stream_ids, values, strict=True)


def _snapshot(states: list[StreamState], shape: StateShape) -> StreamSnapshot:
    """Stack decoded records back into the store's layout: (L, N, H), (N, S), (N,)."""
    lh = shape.layers * shape.hidden
    v = np.stack([st.vector for st in states])  # (N, 2LH + S)
    n = len(states)
    h = torch.from_numpy(v[:, :lh].reshape(n, shape.layers, shape.hidden)).permute(1, 0, 2)
    c = torch.from_numpy(v[:, lh : 2 * lh].reshape(n, shape.layers, shape.hidden)).permute(1, 0, 2)
    return StreamSnapshot(
        stream_ids=[st.stream_id for st in states],
        h=h.contiguous(),
        c=c.contiguous(),
        stats=torch.from_numpy(np.ascontiguousarray(v[:, 2 * lh :])),
        last_ts=np.asarray([st.last_ts for st in states], dtype=np.int64),
        last_seen=np.asarray([st.last_seen for st in states], dtype=np.int64),
    )
