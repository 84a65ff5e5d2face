"""Where checkpoints go: a compacted Kafka topic, or one file per partition in a directory.

The Kafka store writes one record per dirty stream, keyed by the stream id (a tombstone
when the stream is evicted), then one mark per partition, through the worker's transport,
and flushes: acknowledged before any offset it covers is committed. It restores by
reading the state topic to its end with a consumer of its own. The directory store writes
one file per partition instead (write, fsync, rename).

Exactly once (``delivery=exactly_once``), the records go into the worker's transaction
and restore reads ``read_committed`` up to the high watermark when it starts (not the
last stable offset): it waits for transactions still open below it, so a record
committed after a hanging one (a killed worker's, aborted at its restart or at the
transaction timeout) is not missed.
A directory cannot join a Kafka transaction: that combination is refused.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from detector.checkpointing.checkpointer import Checkpointer
from detector.checkpointing.codec import (
    CheckpointError,
    PartitionMark,
    StreamState,
    decode,
    encode_mark,
    mark_key,
    stream_key,
)
from detector.config import Settings
from detector.core.engine import Engine
from detector.errors import BrokerError, ConfigError
from detector.kafka.clients import TopicPartition, connect_consumer
from detector.kafka.partitions import PartitionTracker
from detector.kafka.transport import Offsets
from detector.observability.metrics import Metrics

__all__ = ["DirCheckpointer", "KafkaCheckpointer", "Sender", "make_checkpointer"]

log = logging.getLogger("anomalyd.checkpoint")


class Sender(Protocol):
    """The producing half of a transport."""

    def send(self, topic: str, key: bytes | None, value: bytes | None) -> None: ...
    def flush(self) -> None: ...


class KafkaCheckpointer(Checkpointer):
    """Dirty streams' records and partition marks on a compacted topic; tombstones on eviction."""

    def __init__(
        self,
        settings: Settings,
        sender: Sender,
        engine: Engine,
        partitions: PartitionTracker,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(settings, engine, partitions, metrics, clock)
        self._producer = sender
        self._consumer: Any = None  # kafka.KafkaConsumer, untyped
        self._committed: Any = None  # the same, read_committed (exactly once)

    def _write(self, dirty: set[str], pending: Offsets) -> int:
        topic, n = self.s.topics.state, 0
        resident = [s for s in dirty if s in self.engine.store]
        for sid, value in self._encode_resident(resident, pending):
            key = stream_key(sid)
            self._producer.send(topic, key, value)
            n += len(key) + len(value)
        for sid in dirty.difference(resident):  # evicted: compaction drops the stream
            self._producer.send(topic, stream_key(sid), None)
            n += len(stream_key(sid))
        for tp, offset in pending.items():  # after the streams: a mark never precedes its state
            value = encode_mark(PartitionMark(tp.topic, tp.partition, offset))
            self._producer.send(topic, mark_key(tp.topic, tp.partition), value)
            n += len(value)
        self._producer.flush()  # acknowledged before any offset it covers is committed
        return n

    def _load(self, parts: set[tuple[str, int]]) -> tuple[list[PartitionMark], list[StreamState]]:
        """Read the state topic to its end offsets when the restore starts (exactly once:
        to the high watermarks, read_committed); the latest record per key of ``parts``."""
        s = self.s
        eos = s.delivery == "exactly_once"
        # Exactly once, a killed worker's open transaction holds the end back until the
        # transaction timeout (30 s) when its instance does not come back.
        limit_s = max(60.0 if eos else 30.0, s.consumer.max_poll_interval_ms / 2000)
        deadline = time.monotonic() + limit_s
        if self._consumer is None:  # read_uncommitted: its end offsets are high watermarks
            self._consumer = connect_consumer(s.kafka, attempts=5, group_id=None)
        if eos and self._committed is None:
            self._committed = connect_consumer(
                s.kafka, attempts=5, group_id=None, isolation_level="read_committed"
            )
        c = self._committed if eos else self._consumer
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
        ends = self._consumer.end_offsets(tps)
        latest: dict[bytes, PartitionMark | StreamState] = {}
        read = 0
        while any(c.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"restoring state: read {read} records of {s.topics.state!r} in "
                    f"{limit_s:.0f}s without reaching its end {ends}; the broker is "
                    "unreachable, the topic is too large (is it compacted?) or, exactly "
                    "once, a transaction below the end is still open"
                )
            for recs in c.poll(timeout_ms=500, max_records=10_000).values():
                for r in recs:
                    read += 1
                    _keep_latest(latest, r.key, r.value, parts, f"{r.partition}/{r.offset}")
        marks = [r for r in latest.values() if isinstance(r, PartitionMark)]
        return marks, [r for r in latest.values() if isinstance(r, StreamState)]

    def close(self) -> None:
        for c in (self._consumer, self._committed):
            if c is not None:
                c.close()


def _keep_latest(
    latest: dict[bytes, PartitionMark | StreamState],
    key: bytes,
    value: bytes | None,
    parts: set[tuple[str, int]],
    where: str,
) -> None:
    """Fold one state-topic record into the newest record per key of ``parts``."""
    if value is None:
        latest.pop(key, None)
        return
    try:
        rec = decode(value)
    except CheckpointError as exc:
        log.warning("ignoring an unreadable state record at %s: %s", where, exc)
        return
    if (rec.topic, rec.partition) in parts:
        latest[key] = rec
    else:  # this stream's newest state belongs to another partition
        latest.pop(key, None)


_FRAME = struct.Struct("<I")


class DirCheckpointer(Checkpointer):
    """One file per source partition, rewritten whole (temp file, fsync, rename).

    Every resident stream of a partition is written, not only the dirty ones: a file is a
    complete, self-consistent cut. Meant for one node or small fleets; Kafka scales further.
    A partition with no new offsets keeps its file, less the records of streams evicted
    since: an expired stream left in it came back at the next start, open incident and
    all, and expired again (a second ``resolved``).
    """

    def __init__(
        self,
        settings: Settings,
        directory: Path,
        engine: Engine,
        partitions: PartitionTracker,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(settings, engine, partitions, metrics, clock)
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._gone: dict[int, set[str]] = {}  # partition -> streams evicted since the last write

    def _path(self, topic: str, partition: int) -> Path:
        return self.dir / f"{topic}.{partition}.state"

    def mark_gone(self, stream_ids: Iterable[str]) -> None:
        ids = list(stream_ids)
        super().mark_gone(ids)
        for sid in ids:
            if (p := self.partitions.partition_of(sid)) >= 0:
                self._gone.setdefault(p, set()).add(sid)

    def _write(self, dirty: set[str], pending: Offsets) -> int:
        by_part = self.partitions.streams_by_partition(tp.partition for tp in pending)
        n = 0
        for tp, offset in pending.items():
            frames = [encode_mark(PartitionMark(tp.topic, tp.partition, offset))]
            frames += [v for _, v in self._encode_resident(by_part[tp.partition], pending)]
            n += self._put(tp.topic, tp.partition, frames)
        topic, assigned = self.s.topics.readings, self.partitions.assigned
        for p, ids in self._gone.items():
            path = self._path(topic, p)
            if TopicPartition(topic, p) in pending or TopicPartition(topic, p) not in assigned:
                continue  # rewritten above, or another owner's file now
            drop = {s for s in ids if s not in self.engine.store}  # or come back since
            if drop and path.exists():
                kept = _records(path)
                if any(isinstance(r, StreamState) and r.stream_id in drop for _, r in kept):
                    n += self._put(topic, p, [f for f, r in kept if _keeps(r, drop)])
        self._gone.clear()
        return n

    def _put(self, topic: str, partition: int, frames: list[bytes]) -> int:
        blob = b"".join(_FRAME.pack(len(f)) + f for f in frames)
        _write_atomically(self._path(topic, partition), blob)
        return len(blob)

    def _load(self, parts: set[tuple[str, int]]) -> tuple[list[PartitionMark], list[StreamState]]:
        marks: list[PartitionMark] = []
        states: list[StreamState] = []
        for topic, p in sorted(parts):
            path = self._path(topic, p)
            if not path.exists():
                continue
            for _, rec in _records(path):
                if isinstance(rec, PartitionMark):
                    marks.append(rec)
                else:
                    states.append(rec)
        return marks, states


def _keeps(rec: PartitionMark | StreamState, drop: set[str]) -> bool:
    return not (isinstance(rec, StreamState) and rec.stream_id in drop)


def _records(path: Path) -> list[tuple[bytes, PartitionMark | StreamState]]:
    """The records of one state file, each with its encoded frame. A torn file cannot
    exist (it is renamed into place), but a disk can damage one: the records before the
    damage are kept and the rest start cold, as an unreadable record of the state topic
    does; the next checkpoint rewrites it."""
    blob, i = path.read_bytes(), 0
    out: list[tuple[bytes, PartitionMark | StreamState]] = []
    while i < len(blob):
        try:
            (size,) = _FRAME.unpack_from(blob, i)
            if i + 4 + size > len(blob):
                raise CheckpointError(f"a record of {size} bytes runs past the file's end")
            frame = blob[i + 4 : i + 4 + size]
            out.append((frame, decode(frame)))
        except (CheckpointError, struct.error) as exc:
            log.warning(
                "ignoring %s from byte %d (%d records read): %s; the streams of the rest "
                "start cold",
                path,
                i,
                len(out),
                exc,
            )
            break
        i += 4 + size
    return out


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


def make_checkpointer(
    settings: Settings,
    sender: Sender,
    engine: Engine,
    partitions: PartitionTracker,
    metrics: Metrics | None = None,
    clock: Callable[[], float] = time.time,
) -> Checkpointer | None:
    """The configured checkpointer, or ``None`` when checkpoints are off."""
    st = settings.state
    if st.checkpoint == "off":
        return None
    if st.checkpoint == "kafka":
        return KafkaCheckpointer(settings, sender, engine, partitions, metrics, clock)
    if problem := settings.state_conflict():
        raise ConfigError(problem)
    assert st.dir is not None  # state_conflict says so otherwise
    return DirCheckpointer(settings, st.dir, engine, partitions, metrics, clock)
