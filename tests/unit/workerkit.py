"""The worker over the in-memory transport, as the worker tests drive it: a small real model
published to a temporary directory and served with the threshold forced low, so every
reading alerts (alerts then stand for readings processed)."""

from __future__ import annotations

from pathlib import Path

import orjson

from detector.artifacts import publish
from detector.config import (
    ConsumerSettings,
    EngineSettings,
    ModelSettings,
    Settings,
    StateSettings,
    TopicSettings,
)
from detector.kafka.memory import MemoryBroker, MemoryTransport, Message
from detector.kafka.transport import TopicPartition
from detector.observability.metrics import Metrics
from detector.worker import Worker
from tests.unit.factories import make_bundle

READINGS, ALERTS, DLQ = "readings", "alerts", "dlq"
T0 = 1_700_000_000_000
P0, P1 = TopicPartition(READINGS, 0), TopicPartition(READINGS, 1)


def worker_settings(tmp: Path, interval_s: float = 1e6) -> Settings:
    return Settings(
        topics=TopicSettings(readings=READINGS, alerts=ALERTS, dlq=DLQ, state="state"),
        consumer=ConsumerSettings(max_poll_records=100),
        model=ModelSettings(dir=tmp / "models", reload_interval_s=3600),
        engine=EngineSettings(
            device="cpu", threshold=-1e9, warmup=0, max_gap_s=1e9, incidents=False
        ),
        state=StateSettings(checkpoint="dir", dir=tmp / "state", interval_s=interval_s),
    )


def started_worker(tmp: Path, transport: MemoryTransport, interval_s: float = 1e6) -> Worker:
    models = tmp / "models"
    if not models.exists():
        publish(models, make_bundle(features=2, hidden=8, layers=1))
    w = Worker(worker_settings(tmp, interval_s), transport, Metrics(), clock=lambda: T0 / 1000 + 60)
    assert w.start()
    return w


def produce_reading(broker: MemoryBroker, stream: str, t: int, partition: int) -> Message:
    doc = {"stream_id": stream, "ts": T0 + t * 1000, "values": [float(t), 1.0]}
    return broker.produce(READINGS, stream.encode(), orjson.dumps(doc), partition=partition)


def alert_sources(broker: MemoryBroker) -> list[tuple[int, int, int]]:
    out = []
    for m in broker.messages(ALERTS):
        s = orjson.loads(m.value or b"")["source"]
        out.append((s["partition"], s["offset"], s["index"]))
    return out


def metric_sample(w: Worker, name: str, **labels: str) -> float:
    v = w.metrics.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v
