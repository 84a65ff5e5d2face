"""State checkpoints: each stream's state made durable between batches, restored on assignment.

The worker calls a checkpointer at four points: ``mark_dirty`` (streams a batch touched or
evicted), ``after_flush`` (every alert of a batch acknowledged, offsets not yet committed;
returns the offsets that may be committed now), ``on_revoked`` (partitions leaving) and
``on_assigned`` (partitions arriving, before any of their records is processed; returns
what was restored and which records the restored state already reflects).

The invariant: a committed offset never runs ahead of the durable state. A checkpoint is
written at most every ``state.interval_s`` seconds (sooner when the worker goes idle);
batches in between are flushed but *not committed*: ``after_flush`` returns nothing until
the next checkpoint, which then releases every offset it covers. Records the durable state
already reflects are skipped after a restore (their alerts went out before the checkpoint
was written), so a restart neither loses nor double-applies a reading.

Record layout (see :mod:`detector.checkpointing.codec`): one record per stream, keyed by the
stream id, on a compacted topic (a tombstone when the stream is evicted), plus one *mark*
per source partition carrying the offset below which everything is reflected. The
directory store writes one file per partition instead (write, fsync, rename).
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from detector.checkpointing.codec import (
    CheckpointError,
    PartitionMark,
    StateShape,
    StreamState,
    decode,
    encode_mark,
    encode_streams,
    mark_key,
    stream_key,
)
from detector.config import Settings
from detector.core.engine import Engine
from detector.core.state import StreamSnapshot
from detector.errors import BrokerError, ConfigError
from detector.kafka.clients import OffsetAndMetadata, Producer, TopicPartition, connect_consumer
from detector.observability.metrics import Metrics

__all__ = ["CheckpointError", "Checkpointer", "Restored", "make_checkpointer"]

log = logging.getLogger("anomalyd.checkpoint")
Offsets = dict[TopicPartition, OffsetAndMetadata]
_RESTORE_CHUNK = 4096  # streams per restore call: bounds the host copies


class WorkerView(Protocol):
    """What a checkpointer reads from the worker."""

    engine: Engine | None
    metrics: Metrics
    clock: Callable[[], float]
    _stream_partition: dict[str, int]


@dataclass
class Restored:
    """What ``on_assigned`` restored, and what the worker must skip because of it."""

    partition_floors: dict[TopicPartition, int] = field(default_factory=dict)
    stream_floors: dict[str, int] = field(default_factory=dict)  # streams ahead of their mark
    partitions: dict[str, int] = field(default_factory=dict)  # restored stream -> partition
    evicted: list[str] = field(default_factory=list)  # evicted to make room for restored ones
    refused: int = 0  # records of another model shape: those streams start afresh


class Checkpointer:
    """Dirty set, pending offsets and the interval; subclasses say where state goes."""

    def __init__(self, settings: Settings, monotonic: Callable[[], float] = time.monotonic):
        self.s = settings
        self._now = monotonic
        self._dirty: set[str] = set()
        self._pending: Offsets = {}
        self._unsent: Offsets = {}  # checkpointed in a revocation, not committed yet
        self._last = -float("inf")  # the first batch is checkpointed at once

    def mark_dirty(self, stream_ids: Iterable[str]) -> None:
        self._dirty.update(stream_ids)

    def after_flush(self, worker: WorkerView, offsets: Offsets, idle: bool = False) -> Offsets:
        """Offsets that may be committed now: those of a checkpoint just written, or none."""
        self._pending.update(offsets)
        if not idle and self._now() - self._last < self.s.state.interval_s:
            return {}
        return self.checkpoint(worker)

    def checkpoint(self, worker: WorkerView) -> Offsets:
        """Write what changed since the last checkpoint; returns the offsets it covers."""
        if not self._pending and not self._dirty:
            return {}
        n = self._write(worker, self._dirty, self._pending)
        worker.metrics.checkpoint_bytes.set(n)
        done, self._pending, self._dirty = self._pending, {}, set()
        self._last = self._now()
        return done

    def on_revoked(
        self, worker: WorkerView, revoked: list[TopicPartition], streams: list[str]
    ) -> None:
        # The next owner restores from this checkpoint and skips what it reflects, so the
        # offsets need no commit here (kafka-python forbids a blocking commit inside the
        # rebalance callback anyway). Kept in case the partitions come back to us.
        self._unsent.update(self.checkpoint(worker))

    def on_assigned(self, worker: WorkerView, assigned: list[TopicPartition]) -> Restored:
        eng = worker.engine
        if eng is None:
            return Restored()
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
        ok = [st for st in states if st.shape == shape]
        out.refused = len(states) - len(ok)
        cap = eng.store.max_streams
        if len(ok) > cap:  # as LRU would: the most recently active fit, the rest start afresh
            log.warning("restoring %d of %d streams: engine.max_streams=%d", cap, len(ok), cap)
            ok = sorted(ok, key=lambda st: st.last_ts)[-cap:]
        now_ms = int(worker.clock() * 1000)
        for i in range(0, len(ok), _RESTORE_CHUNK):
            chunk = ok[i : i + _RESTORE_CHUNK]
            a = eng.store.restore(_snapshot(chunk, shape), now_ms)
            out.evicted += a.evicted
        for st in ok:
            out.partitions[st.stream_id] = st.partition
            if st.offset > floor.get((st.topic, st.partition), -1):
                out.stream_floors[st.stream_id] = st.offset
        self._dirty.update(out.evicted)
        log.info(
            "restored %d streams of partitions %s (%d refused: another model shape)",
            len(ok),
            sorted(p for _, p in parts),
            out.refused,
        )
        return out

    def close(self) -> None:
        """Release what the store holds open."""

    # -- the store -------------------------------------------------------------------

    def _write(self, worker: WorkerView, dirty: set[str], pending: Offsets) -> int:
        raise NotImplementedError

    def _load(self, parts: set[tuple[str, int]]) -> tuple[list[PartitionMark], list[StreamState]]:
        raise NotImplementedError

    def _encode_resident(
        self, worker: WorkerView, ids: Iterable[str], pending: Offsets
    ) -> Iterator[tuple[str, bytes]]:
        """(stream id, record) of the named resident streams, tagged with their offsets."""
        eng = worker.engine
        assert eng is not None
        snap = eng.store.snapshot(list(ids))
        if not snap.stream_ids:
            return
        topic = self.s.topics.readings
        parts = [worker._stream_partition.get(s, -1) for s in snap.stream_ids]
        offs = [_next(pending, topic, p) for p in parts]
        b = eng.bundle
        values = encode_streams(
            StateShape.of(b, eng.store.stat_width), b.name, b.version, topic, snap, parts, offs
        )
        yield from zip(snap.stream_ids, values, strict=True)


def _next(pending: Offsets, topic: str, partition: int) -> int:
    o = pending.get(TopicPartition(topic, partition))
    return -1 if o is None else int(o.offset)


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
    )


class KafkaCheckpointer(Checkpointer):
    """Dirty streams' records and partition marks on a compacted topic; tombstones on eviction."""

    def __init__(self, settings: Settings, producer: Producer) -> None:
        super().__init__(settings)
        self._producer = producer
        self._consumer: Any = None

    def _write(self, worker: WorkerView, dirty: set[str], pending: Offsets) -> int:
        eng = worker.engine
        assert eng is not None
        topic, n = self.s.topics.state, 0
        resident = [s for s in dirty if s in eng.store]
        for sid, value in self._encode_resident(worker, resident, pending):
            key = stream_key(sid)
            self._producer.send(topic, key, value)
            n += len(key) + len(value)
        for sid in dirty.difference(resident):  # evicted: compaction drops the stream
            self._producer.send(topic, stream_key(sid), None)  # type: ignore[arg-type]
            n += len(stream_key(sid))
        for tp, om in pending.items():  # after the streams: a mark never precedes its state
            value = encode_mark(PartitionMark(tp.topic, tp.partition, int(om.offset)))
            self._producer.send(topic, mark_key(tp.topic, tp.partition), value)
            n += len(value)
        self._producer.flush()  # acknowledged before any offset it covers is committed
        return n

    def _load(self, parts: set[tuple[str, int]]) -> tuple[list[PartitionMark], list[StreamState]]:
        """Read the state topic to its current end; the latest record per key of ``parts``."""
        s = self.s
        limit_s = max(30.0, s.consumer.max_poll_interval_ms / 2000)
        deadline = time.monotonic() + limit_s
        if self._consumer is None:
            self._consumer = connect_consumer(s.kafka, attempts=5, group_id=None)
        c = self._consumer
        tps = [
            TopicPartition(s.topics.state, p)
            for p in sorted(c.partitions_for_topic(s.topics.state) or ())
        ]
        if not tps:
            raise BrokerError(
                f"state topic {s.topics.state!r} has no partitions: create it "
                "(cleanup.policy=compact) or set ANOMALYD_STATE__CHECKPOINT=off"
            )
        c.assign(tps)
        c.seek_to_beginning(*tps)
        ends = c.end_offsets(tps)
        latest: dict[bytes, PartitionMark | StreamState] = {}
        read = 0
        while any(c.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"restoring state: read {read} records of {s.topics.state!r} in "
                    f"{limit_s:.0f}s without reaching its end {ends}; the broker is "
                    "unreachable or the topic is too large (is it compacted?)"
                )
            for recs in c.poll(timeout_ms=500, max_records=10_000).values():
                for r in recs:
                    read += 1
                    if r.value is None:
                        latest.pop(r.key, None)
                        continue
                    try:
                        rec = decode(r.value)
                    except CheckpointError as exc:
                        log.warning(
                            "ignoring an unreadable state record at %s/%d: %s",
                            r.partition,
                            r.offset,
                            exc,
                        )
                        continue
                    if (rec.topic, rec.partition) in parts:
                        latest[r.key] = rec
                    else:  # this stream's newest state belongs to another partition
                        latest.pop(r.key, None)
        marks = [r for r in latest.values() if isinstance(r, PartitionMark)]
        return marks, [r for r in latest.values() if isinstance(r, StreamState)]

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()


_FRAME = struct.Struct("<I")


class DirCheckpointer(Checkpointer):
    """One file per source partition, rewritten whole (temp file, fsync, rename).

    Every resident stream of a partition is written, not only the dirty ones: a file is a
    complete, self-consistent cut. Meant for one node or small fleets; Kafka scales further.
    """

    def __init__(self, settings: Settings, directory: Path) -> None:
        super().__init__(settings)
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, topic: str, partition: int) -> Path:
        return self.dir / f"{topic}.{partition}.state"

    def _write(self, worker: WorkerView, dirty: set[str], pending: Offsets) -> int:
        by_part: dict[int, list[str]] = {tp.partition: [] for tp in pending}
        for sid, p in worker._stream_partition.items():
            if p in by_part:
                by_part[p].append(sid)
        n = 0
        for tp, om in pending.items():
            frames = [encode_mark(PartitionMark(tp.topic, tp.partition, int(om.offset)))]
            frames += [v for _, v in self._encode_resident(worker, by_part[tp.partition], pending)]
            blob = b"".join(_FRAME.pack(len(f)) + f for f in frames)
            _write_atomically(self._path(tp.topic, tp.partition), blob)
            n += len(blob)
        return n

    def _load(self, parts: set[tuple[str, int]]) -> tuple[list[PartitionMark], list[StreamState]]:
        marks: list[PartitionMark] = []
        states: list[StreamState] = []
        for topic, p in sorted(parts):
            path = self._path(topic, p)
            if not path.exists():
                continue
            blob, i = path.read_bytes(), 0
            while i < len(blob):
                (size,) = _FRAME.unpack_from(blob, i)
                rec = decode(blob[i + 4 : i + 4 + size])  # a torn file cannot exist: rename
                i += 4 + size
                if isinstance(rec, PartitionMark):
                    marks.append(rec)
                else:
                    states.append(rec)
        return marks, states


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)  # the rename itself survives a power cut
    finally:
        os.close(dfd)


def make_checkpointer(settings: Settings, producer: Producer) -> Checkpointer | None:
    """The configured checkpointer, or ``None`` when checkpoints are off."""
    st = settings.state
    if st.checkpoint == "off":
        return None
    if st.checkpoint == "kafka":
        return KafkaCheckpointer(settings, producer)
    if st.dir is None:
        raise ConfigError("state.checkpoint=dir needs state.dir (ANOMALYD_STATE__DIR=/path)")
    return DirCheckpointer(settings, st.dir)
