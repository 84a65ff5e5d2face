"""Prometheus metrics: the only module that imports prometheus_client.

Every metric takes the registry given to :class:`Metrics`, so tests build a fresh
``CollectorRegistry`` and read values with ``get_sample_value``. No stream id is ever a
label: a fleet has millions of them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["Metrics", "parse_exposition"]

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_STEP = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_INCIDENT = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
_BATCH = (1, 10, 50, 100, 500, 1000, 5000, 10_000, 50_000, 100_000)


class Metrics:
    """The worker's metrics, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        p = "anomalyd_"
        self.readings = Counter(p + "readings", "Readings decoded and scored.", registry=r)
        self.bad_readings = Counter(
            p + "bad_readings",
            "Readings refused and sent to the dead-letter topic.",
            ["reason"],
            registry=r,
        )
        self.alerts = Counter(
            p + "alerts", "Alert events (open and resolved) acknowledged by the broker.", registry=r
        )
        self.incidents_opened = Counter(
            p + "incidents_opened",
            "Incidents opened, by the rule that opened them.",
            ["rule"],
            registry=r,
        )
        self.incidents_resolved = Counter(
            p + "incidents_resolved",
            "Incidents resolved, by the first rule that flagged them.",
            ["rule"],
            registry=r,
        )
        self.open_incidents = Gauge(
            p + "open_incidents", "Streams with an open incident.", registry=r
        )
        self.incident_duration = Histogram(
            p + "incident_duration_seconds",
            "From an incident's opening reading to the reading that resolved it.",
            buckets=_INCIDENT,
            registry=r,
        )
        self.batch_size = Histogram(
            p + "batch_size_readings", "Readings per engine batch.", buckets=_BATCH, registry=r
        )
        self.step_seconds = Histogram(
            p + "step_seconds",
            "Engine time per batch (gather, LSTM step, score, scatter).",
            buckets=_STEP,
            registry=r,
        )
        self.reading_to_alert = Histogram(
            p + "reading_to_alert_seconds",
            "From a reading's timestamp to its alert's acknowledgement.",
            buckets=_LATENCY,
            registry=r,
        )
        self.active_streams = Gauge(
            p + "active_streams", "Streams with resident state.", registry=r
        )
        self.evictions = Counter(
            p + "evictions", "Streams evicted from the state store.", ["reason"], registry=r
        )
        self.state_resets = Counter(
            p + "state_resets", "Stream states restarted from zero.", ["reason"], registry=r
        )
        self.consumer_lag = Gauge(
            p + "consumer_lag",
            "Messages behind the partition's high watermark.",
            ["topic", "partition"],
            registry=r,
        )
        self.commits = Counter(p + "commits", "Offset commits that succeeded.", registry=r)
        self.commit_failures = Counter(
            p + "commit_failures",
            "Offset commits that failed (e.g. during a rebalance).",
            registry=r,
        )
        self.rebalances = Counter(
            p + "rebalances", "Partition assignment changes.", ["event"], registry=r
        )
        self.assigned_partitions = Gauge(
            p + "assigned_partitions", "Partitions assigned to this worker.", registry=r
        )
        self.model_info = Gauge(
            p + "model_info",
            "The model version being served (value 1).",
            ["model", "version", "device"],
            registry=r,
        )
        self.model_reloads = Counter(
            p + "model_reloads",
            "Attempts to switch to a newly published model.",
            ["result"],
            registry=r,
        )
        self.device_memory = Gauge(
            p + "device_memory_bytes",
            "Device memory held (CUDA allocator, or state tensors on CPU).",
            registry=r,
        )
        self.ready = Gauge(
            p + "ready", "1 when a model is loaded and partitions are assigned.", registry=r
        )
        self.checkpoint_restore = Histogram(
            p + "checkpoint_restore_seconds",
            "Time to restore streams' state on assignment.",
            buckets=_LATENCY,
            registry=r,
        )
        self.checkpoint_bytes = Gauge(
            p + "checkpoint_bytes", "Bytes written by the last state checkpoint.", registry=r
        )
        self.kafka_errors = Counter(
            p + "kafka_errors", "Kafka calls that failed, by operation.", ["op"], registry=r
        )
        for reason in ("idle", "lru"):
            self.evictions.labels(reason)
        for reason in ("gap", "model_change"):
            self.state_resets.labels(reason)
        for event in ("assigned", "revoked"):
            self.rebalances.labels(event)
        for result in ("ok", "refused"):
            self.model_reloads.labels(result)

    def set_model(self, name: str, version: int, device: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name, str(version), device).set(1)

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition format and its content type, for the /metrics endpoint."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def parse_exposition(text: str) -> dict[str, float]:
    """Sample name -> value from a text exposition, summed over label sets.

    A labelled family reads as its total (``anomalyd_consumer_lag`` over all partitions);
    histogram buckets and summary quantiles, which do not add up, are left out.

    >>> parse_exposition('lag{partition="0"} 3\\nlag{partition="1"} 4\\nup 1\\n')
    {'lag': 7.0, 'up': 1.0}
    """
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "le" in sample.labels or "quantile" in sample.labels:
                continue
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out
