"""Every metric the worker defines moves when what it measures happens.

One worker over the in-memory transport, with the directory checkpoint store, takes a few
batches (a stream with a gap that restarts its state among them); then each metric named
here has a non-zero sample. The last test keeps the list honest: every ``anomalyd_*``
metric is read by some test in this repository.
"""

from __future__ import annotations

import re
from pathlib import Path

from detector.artifacts import publish
from detector.kafka.memory import MemoryBroker, MemoryTransport
from detector.observability.metrics import Metrics
from detector.worker import Worker
from tests.unit.factories import make_bundle
from tests.unit.workerkit import READINGS, T0, metric_sample, produce_reading, worker_settings

TESTS = Path(__file__).resolve().parents[1]


def test_the_data_path_s_metrics_move(tmp_path: Path) -> None:
    broker = MemoryBroker({READINGS: 2})
    for t in range(3):
        produce_reading(broker, "a", t, 0)
        produce_reading(broker, "b", t, 1)
    produce_reading(broker, "a", 10_000, 0)  # ~3 hours later: past max_gap_s, the state restarts
    base = worker_settings(tmp_path, interval_s=1e-3)  # every batch checkpointed
    s = base.model_copy(update={"engine": base.engine.model_copy(update={"max_gap_s": 60.0})})
    publish(tmp_path / "models", make_bundle(features=2, hidden=8, layers=1))
    w = Worker(s, MemoryTransport(broker), Metrics(), clock=lambda: T0 / 1000 + 60)
    assert w.start()
    w.turn()
    w.turn()  # idle: the pending checkpoint is written
    moved = {
        "anomalyd_assigned_partitions": metric_sample(w, "anomalyd_assigned_partitions"),
        "anomalyd_batch_size_readings": metric_sample(w, "anomalyd_batch_size_readings_count"),
        "anomalyd_checkpoint_bytes": metric_sample(w, "anomalyd_checkpoint_bytes"),
        "anomalyd_commit_seconds": metric_sample(w, "anomalyd_commit_seconds_count"),
        "anomalyd_flush_seconds": metric_sample(w, "anomalyd_flush_seconds_count"),
        "anomalyd_poll_seconds": metric_sample(w, "anomalyd_poll_seconds_count"),
        "anomalyd_state_resets": metric_sample(w, "anomalyd_state_resets_total", reason="gap"),
        "anomalyd_step_seconds": metric_sample(w, "anomalyd_step_seconds_count"),
    }
    assert [name for name, v in moved.items() if not v > 0] == []


def test_every_metric_is_read_by_some_test() -> None:
    text = "\n".join(p.read_text() for p in TESTS.rglob("*.py"))
    named = set(re.findall(r"anomalyd_[a-z_]+", text))
    names = sorted(f.name for f in Metrics().registry.collect() if f.name.startswith("anomalyd_"))
    unread = [n for n in names if not any(s.startswith(n) for s in named)]
    assert unread == [], f"metrics no test reads: {unread}"
