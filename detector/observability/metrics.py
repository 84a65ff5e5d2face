"""Prometheus metrics: the only module that imports prometheus_client.

Every metric takes the registry given to :class:`Metrics`, so tests build a fresh
``CollectorRegistry`` and read values with ``get_sample_value``. No stream id is ever a
label: a fleet has millions of them. A scrape whose ``Accept`` names OpenMetrics gets
OpenMetrics (ending in ``# EOF``); any other gets the classic text format.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

__all__ = ["OPENMETRICS", "Metrics", "parse_exposition", "wants_openmetrics"]

#: The media type a scrape names in ``Accept`` to get OpenMetrics.
OPENMETRICS = "application/openmetrics-text"

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_STEP = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_INCIDENT = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
_BATCH = (1, 10, 50, 100, 500, 1000, 5000, 10_000, 50_000, 100_000)
_KAFKA = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The worker's metrics, registered in ``registry``.

    ``monotonic`` is the clock of ``anomalyd_checkpoint_age_seconds`` (read at scrape time).

    Examples
    --------
    >>> m = Metrics()
    >>> m.poll_seconds.observe(0.02)
    >>> m.registry.get_sample_value("anomalyd_poll_seconds_count")
    1.0
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        r = self.registry = registry or CollectorRegistry()
        self._monotonic = monotonic
        self._checkpoint_at: float | None = None
        self._runtime = False
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
        self.model_published = Gauge(
            p + "model_published_timestamp_seconds",
            "When the served model version was published, in Unix time (NaN before a model).",
            registry=r,
        )
        self.model_published.set(math.nan)  # not 0: "published in 1970" would look stale
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
        self.poll_seconds = Histogram(
            p + "poll_seconds",
            "Time in the consumer's poll (waiting for records, rebalance callbacks included).",
            buckets=_KAFKA,
            registry=r,
        )
        self.flush_seconds = Histogram(
            p + "flush_seconds",
            "Time until the broker acknowledged a batch's alerts and dead letters.",
            buckets=_KAFKA,
            registry=r,
        )
        self.commit_seconds = Histogram(
            p + "commit_seconds",
            "Time per offset commit (failed ones included).",
            buckets=_KAFKA,
            registry=r,
        )
        self.checkpoint_age = Gauge(
            p + "checkpoint_age_seconds",
            "Seconds since the last state checkpoint was written (NaN before the first).",
            registry=r,
        )
        self.checkpoint_age.set_function(self._checkpoint_age)
        self.event_time_lag = Gauge(
            p + "event_time_lag_seconds",
            "Now minus the timestamp of the newest reading in the last batch.",
            registry=r,
        )
        self.alertmanager_posts = Counter(
            p + "alertmanager_posts",
            "POSTs of alerts to Alertmanager, by result (ok, failed: retried, rejected: 4xx).",
            ["result"],
            registry=r,
        )
        self.alertmanager_dropped = Counter(
            p + "alertmanager_dropped_alerts",
            "Alerts given up: rejected by Alertmanager, or past max_pending while it was down.",
            registry=r,
        )
        for result in ("ok", "failed", "rejected"):
            self.alertmanager_posts.labels(result)
        for reason in ("idle", "lru"):
            self.evictions.labels(reason)
        for reason in ("gap", "model_change", "resized"):
            self.state_resets.labels(reason)
        for event in ("assigned", "revoked"):
            self.rebalances.labels(event)
        for result in ("ok", "refused"):
            self.model_reloads.labels(result)

    def add_runtime_collectors(self) -> None:
        """Register the process (CPU, memory, file descriptors), platform and GC collectors.

        The worker's registry only: they are not ``anomalyd_`` metrics. Idempotent.
        """
        if self._runtime:
            return
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._runtime = True

    def set_model(self, name: str, version: int, device: str, published: float = math.nan) -> None:
        """The model now served; ``published`` is its publication time (Unix seconds)."""
        self.model_info.clear()
        self.model_info.labels(name, str(version), device).set(1)
        self.model_published.set(published)

    def checkpoint_written(self) -> None:
        """A state checkpoint was written: its age starts again from zero."""
        self._checkpoint_at = self._monotonic()

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop the series of a partition this worker no longer owns."""
        self.consumer_lag.remove(topic, str(partition))

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition and its content type for a scrape's ``Accept`` header.

        >>> Metrics().exposition(OPENMETRICS)[0].endswith(b"# EOF\\n")
        True
        """
        if wants_openmetrics(accept):
            body: bytes = openmetrics.generate_latest(self.registry)  # type: ignore[no-untyped-call]  # untyped upstream
            return body, openmetrics.CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def _checkpoint_age(self) -> float:
        at = self._checkpoint_at
        return math.nan if at is None else max(0.0, self._monotonic() - at)


def wants_openmetrics(accept: str) -> bool:
    """Whether an ``Accept`` header names OpenMetrics (as prometheus_client negotiates it).

    >>> wants_openmetrics("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
    True
    >>> wants_openmetrics("text/plain;version=0.0.4")
    False
    """
    return any(part.split(";", 1)[0].strip() == OPENMETRICS for part in accept.split(","))


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
