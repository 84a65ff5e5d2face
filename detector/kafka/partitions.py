"""Partition bookkeeping: what this worker owns and what restored state already reflects.

One place for the facts that rebalances, batches, evictions and checkpoints all touch:

- the assigned partitions;
- the partition each resident stream's readings come from (a checkpoint files a stream
  under it; a revocation evicts the streams of the partitions that leave);
- *floors* after a restore: records of a partition below its checkpoint mark, and readings
  of a stream below its own newer record, are reflected in the restored state already and
  are skipped (docs/reliability.md, "Restore and skip").
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from detector.core.schema import DecodedBatch
from detector.kafka.transport import Record, TopicPartition

__all__ = ["PartitionTracker"]

log = logging.getLogger("anomalyd.partitions")


class PartitionTracker:
    """Assigned partitions of ``topic``, stream -> partition, and skip floors.

    Examples
    --------
    >>> t = PartitionTracker("readings")
    >>> t.assign([TopicPartition("readings", 0)])
    >>> t.record(["pump-1"], [0])
    >>> t.revoke([TopicPartition("readings", 0)]), t.assigned
    (['pump-1'], frozenset())
    """

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._assigned: set[TopicPartition] = set()
        self._stream_partition: dict[str, int] = {}
        self._floors: dict[TopicPartition, int] = {}
        self._stream_floors: dict[str, int] = {}

    @property
    def assigned(self) -> frozenset[TopicPartition]:
        return frozenset(self._assigned)

    def __len__(self) -> int:
        """Streams tracked."""
        return len(self._stream_partition)

    # -- ownership --------------------------------------------------------------------

    def assign(self, tps: Iterable[TopicPartition]) -> None:
        self._assigned.update(tps)

    def revoke(self, tps: Iterable[TopicPartition]) -> list[str]:
        """Forget the partitions; returns their streams, which the worker must evict."""
        tps = set(tps)
        gone = {tp.partition for tp in tps if tp.topic == self.topic}
        streams = [s for s, p in self._stream_partition.items() if p in gone]
        for s in streams:
            del self._stream_partition[s]
            self._stream_floors.pop(s, None)
        for tp in tps:
            self._floors.pop(tp, None)
        self._assigned -= tps
        return streams

    # -- streams ----------------------------------------------------------------------

    def record(self, stream_ids: Sequence[str], partitions: Sequence[int]) -> None:
        """The streams a batch fed, with the partition of each reading."""
        self._stream_partition.update(zip(stream_ids, partitions, strict=True))

    def forget(self, stream_ids: Iterable[str]) -> None:
        """Streams no longer resident (evicted)."""
        for s in stream_ids:
            self._stream_partition.pop(s, None)

    def forget_all(self) -> None:
        """Every stream restarts (a model of another state shape)."""
        self._stream_partition.clear()

    def partition_of(self, stream_id: str) -> int:
        """The stream's source partition, or -1 when unknown."""
        return self._stream_partition.get(stream_id, -1)

    def streams_by_partition(self, partitions: Iterable[int]) -> dict[int, list[str]]:
        """The tracked streams of each of ``partitions`` (an empty list for none)."""
        out: dict[int, list[str]] = {p: [] for p in partitions}
        for s, p in self._stream_partition.items():
            if p in out:
                out[p].append(s)
        return out

    # -- restore and skip -------------------------------------------------------------

    def restored(
        self,
        partition_floors: Mapping[TopicPartition, int],
        stream_floors: Mapping[str, int],
        streams: Mapping[str, int],
    ) -> None:
        """What a restore brought back: floors to skip below, streams with their partition."""
        self._floors.update(partition_floors)
        self._stream_floors.update(stream_floors)
        self._stream_partition.update(streams)

    def skip_reflected(self, records: list[Record]) -> list[Record]:
        """Drop records below their partition's floor: applied, alerted, dead-lettered already."""
        if not self._floors:
            return records
        first: dict[TopicPartition, int] = {}
        last: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            first.setdefault(tp, r.offset)
            last[tp] = r.offset
        floors = {tp: self._floors[tp] for tp in first if tp in self._floors}
        for tp, floor in floors.items():
            if first[tp] > floor:  # e.g. offsets reset forward: the state misses readings
                log.warning(
                    "partition %d resumes at offset %d, past its state's offset %d",
                    tp.partition,
                    first[tp],
                    floor,
                )
            if last[tp] >= floor:
                del self._floors[tp]
        keep = [
            r for r in records if r.offset >= floors.get(TopicPartition(r.topic, r.partition), -1)
        ]
        if len(keep) < len(records):
            log.info("skipped %d records already in the restored state", len(records) - len(keep))
        return keep

    def drop_reflected(self, batch: DecodedBatch) -> DecodedBatch:
        """Drop readings of streams checkpointed past their partition's mark (a late writer)."""
        if not self._stream_floors:
            return batch
        offsets = batch.origins.offsets().tolist()
        keep = [not self._reflected(s, o) for s, o in zip(batch.stream_ids, offsets, strict=True)]
        return batch if all(keep) else batch.select(keep)

    def _reflected(self, stream_id: str, offset: int) -> bool:
        floor = self._stream_floors.get(stream_id)
        if floor is None:
            return False
        if offset < floor:
            return True
        del self._stream_floors[stream_id]
        return False
