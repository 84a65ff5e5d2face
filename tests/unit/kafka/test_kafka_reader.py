"""The trainer's topic reader: a fixed time range, alerted readings left out, over an
in-memory stand-in for kafka-python's consumer."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from detector.config import KafkaSettings
from detector.errors import InputError
from detector.kafka import clients
from detector.kafka.clients import TopicPartition
from training.kafkasource import from_kafka, kafka_features

Log = list[tuple[int, bytes, bytes]]  # (record time ms, key, value), in offset order


class FakeConsumer:
    """One partition per topic; enough of KafkaConsumer for a ranged read."""

    def __init__(self, topics: dict[str, Log]) -> None:
        self._topics = topics
        self._pos: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return {0} if topic in self._topics else None

    def assign(self, tps: Iterable[TopicPartition]) -> None:
        self._pos = dict.fromkeys(tps, 0)

    def offsets_for_times(self, times: dict[TopicPartition, int]) -> dict[TopicPartition, Any]:
        out: dict[TopicPartition, Any] = {}
        for tp, t in times.items():
            log = self._topics[tp.topic]
            first = next((i for i, (ts, _, _) in enumerate(log) if ts >= t), None)
            out[tp] = None if first is None else SimpleNamespace(offset=first)
        return out

    def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self._topics[tp.topic]) for tp in tps}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._pos[tp] = offset

    def pause(self, *tps: TopicPartition) -> None:
        self._paused.update(tps)

    def position(self, tp: TopicPartition) -> int:
        return self._pos[tp]

    def poll(self, timeout_ms: int) -> dict[TopicPartition, list[Any]]:
        out: dict[TopicPartition, list[Any]] = {}
        for tp, pos in self._pos.items():
            log = self._topics[tp.topic]
            if tp in self._paused or pos >= len(log):
                continue
            batch = log[pos : pos + 2]  # small batches: the range may end inside one
            out[tp] = [
                SimpleNamespace(offset=pos + i, key=k, value=v) for i, (_, k, v) in enumerate(batch)
            ]
            self._pos[tp] = pos + len(batch)
        return out

    def close(self) -> None:
        pass


def _reading(sid: str, ts: int, temp: float) -> tuple[int, bytes, bytes]:
    return ts, sid.encode(), orjson.dumps({"ts": ts, "values": {"temp": temp}})


def test_reads_the_range_groups_by_stream_and_leaves_alerted_readings_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    readings = [
        _reading("a", 500, 0.0),  # before the range
        _reading("a", 1000, 1.0),
        _reading("b", 1100, 2.0),
        (1150, b"b", b"not json"),  # bad: counted, skipped
        _reading("a", 1200, 3.0),  # alerted
        _reading("b", 1300, 4.0),
        _reading("a", 2000, 5.0),  # at the end: outside [start, end)
    ]
    alerts = [(1250, b"a", orjson.dumps({"stream_id": "a", "ts": 1200, "score": 9.0}))]
    topics = {"readings": readings, "alerts": alerts}
    monkeypatch.setattr(clients, "KafkaConsumer", lambda **_: FakeConsumer(topics))

    series = from_kafka(KafkaSettings(), "readings", 1000, 2000, ("temp",), alerts_topic="alerts")

    got = {s.stream_id: (s.ts_ms.tolist(), s.values[:, 0].tolist()) for s in series}
    assert got == {"a": ([1000], [1.0]), "b": ([1100, 1300], [2.0, 4.0])}
    # A sample of the fleet (anomalyd train --max-streams): the others' readings never kept.
    only_b = from_kafka(KafkaSettings(), "readings", 1000, 2000, ("temp",), admit="b".__eq__)
    assert [s.stream_id for s in only_b] == ["b"]


def test_a_first_model_takes_its_features_from_the_readings_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `anomalyd train --source kafka` without --features and without a model (the deploy
    # units' first run) once stopped: "--source kafka needs --features"
    log = [_reading("a", 1000, 1.0)]
    log += [(1100, b"b", orjson.dumps({"ts": 1100, "values": {"vibration": 2.0, "temp": 3.0}}))]
    log += [(1200, b"c", orjson.dumps({"ts": 1200, "values": {"pressure": 4.0}}))]
    arrays = [(1000, b"a", orjson.dumps({"ts": 1000, "values": [1.0, 2.0]}))]
    topics = {"readings": log, "arrays": arrays}
    monkeypatch.setattr(clients, "KafkaConsumer", lambda **_: FakeConsumer(topics))

    assert kafka_features(KafkaSettings(), "readings", 0, 2000) == ("temp", "vibration", "pressure")
    assert kafka_features(KafkaSettings(), "readings", 0, 2000, sample=2) == ("temp", "vibration")
    with pytest.raises(InputError, match="arrays: 1 readings in the range name no features"):
        kafka_features(KafkaSettings(), "arrays", 0, 2000)
