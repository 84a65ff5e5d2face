"""What the worker tells Prometheus about its batches, incidents and partitions.

Pure bookkeeping on a :class:`~detector.observability.metrics.Metrics`; the worker calls
these once its events are acknowledged (counted what Kafka has, not what was tried).
"""

from __future__ import annotations

import numpy as np

from detector.core.engine import BatchResult
from detector.core.incidents import Dropped, rule_names
from detector.core.schema import DecodedBatch
from detector.errors import BrokerError
from detector.kafka.partitions import PartitionTracker
from detector.kafka.transport import Transport
from detector.observability.metrics import Metrics

__all__ = [
    "KAFKA_OPS",
    "observe_dropped",
    "observe_events",
    "observe_scored",
    "prepare",
    "update_lag",
]

#: The ``op`` labels of ``anomalyd_kafka_errors_total``.
KAFKA_OPS = ("subscribe", "poll", "send", "flush", "commit", "lag")


def prepare(m: Metrics) -> None:
    """The worker's metrics that exist from the start: runtime collectors, error counters."""
    m.add_runtime_collectors()
    for op in KAFKA_OPS:
        m.kafka_errors.labels(op)


def update_lag(transport: Transport, partitions: PartitionTracker, m: Metrics) -> None:
    """Each assigned partition's lag; a failed lookup (counted) waits for the next round."""
    for tp in sorted(partitions.assigned):
        try:
            lag = transport.lag(tp)
        except BrokerError:
            continue
        if lag is not None:
            m.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)


def observe_dropped(m: Metrics, d: Dropped) -> None:
    """An open incident resolved because its stream's state was dropped."""
    m.incidents_resolved.labels((rule_names(d.rules) or ["error"])[0]).inc()
    m.incident_duration.observe(max(0, d.last_ts_ms - d.opened_ms) / 1000)
    m.alerts.inc()


def observe_events(m: Metrics, batch: DecodedBatch, res: BatchResult, now: float) -> None:
    """A batch's events acknowledged: count them and their incidents, and each opening's
    latency from the reading's time."""
    opened = np.flatnonzero(res.anomalous)
    for t in batch.ts[opened].tolist():
        m.reading_to_alert.observe(max(0.0, now - t / 1000))
    for mask in res.rules[opened].tolist():
        m.incidents_opened.labels((rule_names(mask) or ["error"])[0]).inc()
    events = len(opened)
    inc = res.incidents
    if inc is not None:
        done = np.flatnonzero(inc.resolved)
        for k in done.tolist():
            m.incidents_resolved.labels((rule_names(int(inc.rules[k])) or ["error"])[0]).inc()
            m.incident_duration.observe(max(0, int(batch.ts[k]) - int(inc.opened_ms[k])) / 1000)
        events += len(done)
    m.alerts.inc(events)


def observe_scored(m: Metrics, batch: DecodedBatch, res: BatchResult, now: float) -> None:
    """A batch the engine stepped: its size, the readings, and the streams it restarted."""
    m.batch_size.observe(len(batch))
    m.event_time_lag.set(now - int(batch.ts.max()) / 1000)
    m.readings.inc(len(batch))
    if res.evicted:
        m.evictions.labels("lru").inc(len(res.evicted))
    if res.resets:
        m.state_resets.labels("gap").inc(res.resets)
    if res.resized:  # a stream measured at a size it outgrew (detector.core.sizes)
        m.state_resets.labels("resized").inc(res.resized)
