"""Worker metrics: lag series follow the assignment, the Kafka-side latencies and ages move
with a batch, the served model's age is known, the runtime collectors are there, and a
scrape may ask for OpenMetrics."""

from __future__ import annotations

import math
import time
import urllib.request
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
from detector.kafka.memory import MemoryBroker, MemoryTransport
from detector.observability.http import HealthServer
from detector.observability.metrics import OPENMETRICS, Metrics
from detector.worker import Worker
from tests.unit.factories import make_bundle

READINGS = "readings"
T0 = 1_700_000_000_000
NOW_S = T0 / 1000 + 60  # the worker's wall clock: a minute after the first reading


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _worker(tmp: Path, transport: MemoryTransport, monotonic: FakeClock | None = None) -> Worker:
    models = tmp / "models"
    if not models.exists():
        publish(models, make_bundle(features=2, hidden=8, layers=1))
    settings = Settings(
        topics=TopicSettings(readings=READINGS, alerts="alerts", dlq="dlq", state="state"),
        consumer=ConsumerSettings(max_poll_records=100),
        model=ModelSettings(dir=models, reload_interval_s=3600),
        engine=EngineSettings(device="cpu", warmup=0, max_gap_s=1e9),
        state=StateSettings(checkpoint="dir", dir=tmp / "state", interval_s=1e6),
    )
    w = Worker(
        settings, transport, Metrics(), clock=lambda: NOW_S, monotonic=monotonic or FakeClock()
    )
    assert w.start()
    return w


def _reading(broker: MemoryBroker, stream: str, t: int, partition: int) -> None:
    doc = {"stream_id": stream, "ts": T0 + t * 1000, "values": [float(t), 1.0]}
    broker.produce(READINGS, stream.encode(), orjson.dumps(doc), partition=partition)


def _sample(w: Worker, name: str, **labels: str) -> float | None:
    return w.metrics.registry.get_sample_value(name, labels)


def test_a_revoked_partition_leaves_no_lag_series(tmp_path: Path) -> None:
    broker = MemoryBroker({READINGS: 2})
    for t in range(3):
        _reading(broker, "a", t, 0)
        _reading(broker, "b", t, 1)
    mem, clock = MemoryTransport(broker), FakeClock()
    w = _worker(tmp_path, mem, clock)
    w.turn()  # the first turn updates lag
    assert _lag_partitions(w) == ["0", "1"]
    mem.reassign([0])  # eager: both revoked, partition 0 comes back
    w.turn()
    assert _lag_partitions(w) == []
    clock.t += 5  # the next lag round
    w.turn()
    assert _lag_partitions(w) == ["0"]  # partition 1 is another worker's to report


def _lag_partitions(w: Worker) -> list[str]:
    return sorted(
        s.labels["partition"] for f in w.metrics.consumer_lag.collect() for s in f.samples
    )


def test_a_batch_moves_the_kafka_latencies_and_the_ages(tmp_path: Path) -> None:
    broker = MemoryBroker({READINGS: 1})
    _reading(broker, "a", 0, 0)
    _reading(broker, "a", 5, 0)  # the newest reading: 55 s before the worker's now
    w = _worker(tmp_path, MemoryTransport(broker))
    age = _sample(w, "anomalyd_checkpoint_age_seconds")
    assert age is not None and math.isnan(age)  # no checkpoint written yet
    w.turn()  # the first batch is checkpointed and committed at once
    for name in ("poll", "flush", "commit"):
        assert _sample(w, f"anomalyd_{name}_seconds_count") == 1, name
    assert _sample(w, "anomalyd_event_time_lag_seconds") == 55.0
    age = _sample(w, "anomalyd_checkpoint_age_seconds")
    assert age is not None and 0 <= age < 60
    assert _sample(w, "process_cpu_seconds_total") is not None  # runtime collectors
    assert _sample(w, "python_gc_collections_total", generation="0") is not None


def test_the_served_model_says_when_it_was_published(tmp_path: Path) -> None:
    """What the model-age alert reads: NaN before a model, then its publication time."""
    before = Metrics().registry.get_sample_value("anomalyd_model_published_timestamp_seconds")
    assert before is not None and math.isnan(before)
    published = time.time()
    w = _worker(tmp_path, MemoryTransport(MemoryBroker({READINGS: 1})))
    at = _sample(w, "anomalyd_model_published_timestamp_seconds")
    assert at is not None and published - 5 <= at <= time.time()


def test_checkpoint_age_counts_from_the_last_checkpoint() -> None:
    now = [100.0]
    m = Metrics(monotonic=lambda: now[0])
    m.checkpoint_written()
    now[0] += 42.5
    assert m.registry.get_sample_value("anomalyd_checkpoint_age_seconds") == 42.5


def test_a_scrape_gets_openmetrics_when_it_asks_for_it() -> None:
    m = Metrics()
    m.readings.inc(3)
    http = HealthServer("127.0.0.1", 0, m.exposition, lambda: (True, ""), lambda: (True, ""))
    url = f"http://127.0.0.1:{http.start().port}/metrics"
    try:
        ask = f"{OPENMETRICS};version=1.0.0,text/plain;version=0.0.4;q=0.5"
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": ask})) as r:
            ctype, body = r.headers["Content-Type"], r.read().decode()
        assert ctype == "application/openmetrics-text; version=1.0.0; charset=utf-8"
        assert body.endswith("# EOF\n") and "anomalyd_readings_total 3.0" in body
        with urllib.request.urlopen(url) as r:  # Prometheus before OpenMetrics, curl
            ctype, body = r.headers["Content-Type"], r.read().decode()
        assert ctype.startswith("text/plain;")
        assert "# EOF" not in body and "anomalyd_readings_total 3.0" in body
    finally:
        http.close()
