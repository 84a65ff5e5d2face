"""Alert events out, per the data contract: incidents, deterministic ids, the evidence.

An alert is an *incident* event: ``open`` when a stream turns anomalous, ``resolved`` when it
has been normal again for a while (:mod:`detector.core.incidents`). Every event's
``alert_id`` of an ``open`` event hashes the stream id and the source position (topic,
partition, offset, index within a batch message) of the reading that opened it; of a
``resolved`` event, the incident's id alone — an incident is closed once, whichever reading
(or drop) closed it — so replaying the same input yields the same ids and a consumer can
de-duplicate the at-least-once redeliveries, even when a replay after a crash decides a
near-tie at another reading. ``incident_id`` (stream id and the opening reading's time)
ties a ``resolved`` event to its ``open`` one.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from detector.core.timefmt import iso_ms

__all__ = [
    "SCHEMA_VERSION",
    "Origin",
    "alert_id",
    "build_alert",
    "build_resolved",
    "incident_id",
    "resolved_id",
    "top_errors",
]

SCHEMA_VERSION = 2  # 1: one alert per anomalous reading; 2: incident events


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a reading came from: Kafka position plus its index in a batch message (or -1)."""

    topic: str
    partition: int
    offset: int
    index: int = -1


def alert_id(stream_id: str, origin: Origin, event: str = "open") -> str:
    """Deterministic id of the ``event`` caused by the reading at ``origin``.

    >>> a = alert_id("pump-1", Origin("sensor-readings", 3, 1042))
    >>> a == alert_id("pump-1", Origin("sensor-readings", 3, 1042)), len(a)
    (True, 32)
    >>> a != alert_id("pump-1", Origin("sensor-readings", 3, 1042), "resolved")
    True
    """
    key = (
        f"{stream_id}\x00{origin.topic}\x00{origin.partition}\x00{origin.offset}\x00{origin.index}"
    )
    if event != "open":  # an open event keeps the id an alert had before incidents
        key += f"\x00{event}"
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def incident_id(stream_id: str, opened_ms: int) -> str:
    """Deterministic id of a stream's incident opened at ``opened_ms`` (the reading's time).

    >>> incident_id("pump-1", 0) == incident_id("pump-1", 0) != incident_id("pump-1", 1)
    True
    """
    return hashlib.blake2b(f"{stream_id}\x00{opened_ms}".encode(), digest_size=16).hexdigest()


def resolved_id(incident: str) -> str:
    """The ``alert_id`` of the event that closes ``incident``: one per incident.

    >>> resolved_id(incident_id("pump-1", 0)) != incident_id("pump-1", 0)
    True
    """
    return hashlib.blake2b(f"{incident}\x00resolved".encode(), digest_size=16).hexdigest()


def top_errors(errors: list[float], k: int) -> list[int]:
    """Indices of the ``k`` largest errors by magnitude, ties in feature order, nan last.

    >>> top_errors([0.5, -2.0, float("nan"), 2.0], 3)
    [1, 3, 0]
    """
    return sorted(range(len(errors)), key=lambda i: _magnitude(errors[i]))[:k]


def _magnitude(e: float) -> float:
    return -abs(e) if e == e else math.inf  # ascending: largest first, nan after every number


def _source(origin: Origin) -> dict[str, Any]:
    return {
        "topic": origin.topic,
        "partition": origin.partition,
        "offset": origin.offset,
        "index": origin.index,
    }


def build_alert(
    *,
    stream_id: str,
    ts_ms: int,
    origin: Origin,
    detected_ms: int,
    score: float,
    likelihood: float,
    threshold: float,
    model_name: str,
    model_version: int,
    features: tuple[str, ...],
    expected: np.ndarray,
    observed: tuple[float, ...],
    errors: np.ndarray,
    rule: str = "error",
    top_k: int = 3,
) -> dict[str, Any]:
    """The ``open`` event of the incident the reading at ``origin`` opened.

    ``expected``/``errors`` are (F,); ``rule`` the first rule that flagged the reading.
    """
    errs, exp = errors.tolist(), expected.tolist()  # Python floats: no numpy call per item
    contrib = [
        {
            "feature": features[i],
            "expected": round(exp[i], 6),
            "observed": None if observed[i] != observed[i] else observed[i],  # nan -> null
            "error": round(errs[i], 4),
        }
        for i in top_errors(errs, top_k)
        if errs[i] != 0.0
    ]
    return {
        "schema_version": SCHEMA_VERSION,
        "event": "open",
        "alert_id": alert_id(stream_id, origin),
        "incident_id": incident_id(stream_id, ts_ms),
        "stream_id": stream_id,
        "ts": iso_ms(ts_ms),
        "detected_at": iso_ms(detected_ms),
        "rule": rule,
        "score": round(score, 4),
        "likelihood": round(likelihood, 6),
        "threshold": threshold,
        "model": {"name": model_name, "version": model_version},
        "contributions": contrib,
        "source": _source(origin),
    }


def build_resolved(
    *,
    stream_id: str,
    ts_ms: int,
    origin: Origin | None,
    detected_ms: int,
    opened_ms: int,
    readings: int,
    flagged: int,
    peak: float,
    rules: list[str],
    threshold: float,
    model_name: str,
    model_version: int,
    features: tuple[str, ...],
    feature_peak: np.ndarray,
    reason: str = "recovered",
    top_k: int = 3,
) -> dict[str, Any]:
    """The ``resolved`` event of a stream's incident; ``origin`` is the resolving reading's.

    ``feature_peak`` (F,) is each feature's largest |error| while the incident was open.
    ``reason``: ``recovered`` (normal readings resolved it), or the stream's state was
    dropped with the incident open — ``expired`` (idle past the TTL), ``evicted`` (to make
    room), ``model_change`` — and no reading resolved it: ``origin`` is None, ``ts`` the
    stream's last reading's time. The id is the incident's closing id (:func:`resolved_id`).
    """
    peaks = feature_peak.tolist()  # each >= 0: the largest magnitudes are the largest
    top = [
        {"feature": features[i], "peak_error": round(peaks[i], 4)}
        for i in top_errors(peaks, top_k)
        if peaks[i] > 0
    ]
    return {
        "schema_version": SCHEMA_VERSION,
        "event": "resolved",
        "alert_id": resolved_id(incident_id(stream_id, opened_ms)),
        "incident_id": incident_id(stream_id, opened_ms),
        "reason": reason,
        "stream_id": stream_id,
        "ts": iso_ms(ts_ms),
        "opened_ts": iso_ms(opened_ms),
        "detected_at": iso_ms(detected_ms),
        "duration_s": round(max(0, ts_ms - opened_ms) / 1000, 3),
        "readings": readings,
        "flagged_readings": flagged,
        "peak_score": round(peak, 4),
        "rules": rules,
        "threshold": threshold,
        "model": {"name": model_name, "version": model_version},
        "top_features": top,
        "source": None if origin is None else _source(origin),
    }
