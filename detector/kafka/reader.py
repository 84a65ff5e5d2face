"""Reading a topic over a fixed time range, for the trainer's history.

:func:`read_range` returns the (key, value) of every record whose record time lies in
[start_ms, end_ms); :func:`read_readings` decodes them with the live path's decoder
(:func:`detector.core.schema.decode_message`) and keeps the readings whose own time lies
in the range; :func:`read_alerted` lists which readings an alerts topic flagged. Clients
are built by :func:`detector.kafka.clients.connect_consumer` from :class:`KafkaSettings`,
so the trainer connects exactly as the worker does (SASL, TLS, timeouts).
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass

import orjson
from kafka import TopicPartition
from kafka.errors import KafkaError

from detector.config import KafkaSettings
from detector.core.schema import BadReading, FeatureSpec, Reading, decode_message
from detector.core.timefmt import parse_ts
from detector.errors import BrokerError
from detector.kafka.clients import connect_consumer

__all__ = ["RangeReadings", "Record", "read_alerted", "read_range", "read_readings"]

Record = tuple[bytes | None, bytes | None]  # (key, value)


@dataclass(frozen=True, slots=True)
class RangeReadings:
    """What :func:`read_readings` found: the readings kept, and how many were not."""

    readings: list[Reading]
    bad: int  # refused by the decoder
    excluded: int  # in ``exclude``


def read_range(
    k: KafkaSettings,
    topic: str,
    start_ms: int,
    end_ms: int,
    *,
    idle_ms: int = 30_000,
    client_id: str | None = None,
    limit: int | None = None,
) -> list[Record]:
    """(key, value) of every record of ``topic`` with record time in [start_ms, end_ms)
    (the first ``limit`` found, with a limit).

    Seeks each partition with ``offsets_for_times`` and stops at the first offset at or
    after ``end_ms`` (or the end offset at the time of the call): a fixed range, so a
    reader of a live topic finishes. Raises BrokerError when no broker answers, the topic
    is missing, or no record arrives for ``idle_ms`` with partitions unfinished.
    """
    extra = {"client_id": client_id} if client_id else {}
    consumer = connect_consumer(k, attempts=1, group_id=None, **extra)
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise BrokerError(f"topic {topic!r} does not exist or has no partitions")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        first = consumer.offsets_for_times({tp: start_ms for tp in tps})
        after = consumer.offsets_for_times({tp: end_ms for tp in tps})
        ends = consumer.end_offsets(tps)
        stop: dict[TopicPartition, int] = {}
        for tp in tps:
            lo, hi = first.get(tp), after.get(tp)
            stop_at = hi.offset if hi is not None else ends[tp]
            if lo is None or lo.offset >= stop_at:
                continue  # nothing in the range on this partition
            consumer.seek(tp, lo.offset)
            stop[tp] = stop_at
        consumer.pause(*[tp for tp in tps if tp not in stop])
        out: list[Record] = []
        while stop:
            batch = consumer.poll(timeout_ms=idle_ms)
            if not batch:
                raise BrokerError(
                    f"no records from {topic} for {idle_ms} ms with partitions "
                    f"{sorted(tp.partition for tp in stop)} unfinished"
                )
            for tp, records in batch.items():
                end = stop.get(tp)
                if end is None:
                    continue
                out += [(r.key, r.value) for r in records if r.offset < end]
                if limit is not None and len(out) >= limit:
                    return out[:limit]
                if consumer.position(tp) >= end:
                    del stop[tp]
                    consumer.pause(tp)
        return out
    except KafkaError as exc:
        raise BrokerError(f"reading {topic}: {exc}") from exc
    finally:
        consumer.close()


def read_readings(
    k: KafkaSettings,
    topic: str,
    start_ms: int,
    end_ms: int,
    spec: FeatureSpec,
    *,
    exclude: Container[tuple[str, int]] = frozenset(),
    idle_ms: int = 30_000,
    client_id: str | None = None,
    admit: Callable[[str], bool] | None = None,
) -> RangeReadings:
    """The readings of ``topic`` in [start_ms, end_ms), in topic order, decoded for ``spec``.

    A record in the range may carry readings outside it (late or early data): those are
    dropped. Readings whose (stream_id, ts_ms) is in ``exclude`` are left out and counted;
    so are, uncounted, those of streams ``admit`` refuses (a sample of a large fleet).
    """
    readings: list[Reading] = []
    bad = excluded = 0
    records = read_range(k, topic, start_ms, end_ms, idle_ms=idle_ms, client_id=client_id)
    for key, value in records:
        for r in decode_message(value, key, spec):
            if isinstance(r, BadReading):
                bad += 1
            elif not start_ms <= r.ts_ms < end_ms:
                continue
            elif (r.stream_id, r.ts_ms) in exclude:
                excluded += 1
            elif admit is None or admit(r.stream_id):
                readings.append(r)
    return RangeReadings(readings, bad, excluded)


def read_alerted(
    k: KafkaSettings,
    alerts_topic: str,
    start_ms: int,
    end_ms: int,
    *,
    idle_ms: int = 30_000,
    client_id: str | None = None,
) -> set[tuple[str, int]]:
    """(stream_id, ts_ms) of the readings alerted by the alerts in [start_ms, end_ms).

    Messages that are not alerts (no ``stream_id`` or ``ts``) are skipped.
    """
    alerted: set[tuple[str, int]] = set()
    for _, value in read_range(
        k, alerts_topic, start_ms, end_ms, idle_ms=idle_ms, client_id=client_id
    ):
        try:
            alert = orjson.loads(value or b"")
            stream_id, ts = str(alert["stream_id"]), parse_ts(alert["ts"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
        if ts is not None:
            alerted.add((stream_id, ts))
    return alerted
