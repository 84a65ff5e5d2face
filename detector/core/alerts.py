"""Alerts out, per the data contract: deterministic ids, the evidence, the source position.

The alert id hashes the stream id and the reading's source position (topic, partition,
offset, index within a batch message), so replaying the same input yields the same ids and
a consumer can de-duplicate the at-least-once redeliveries.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from detector.core.timefmt import iso_ms

__all__ = ["Origin", "alert_id", "build_alert"]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a reading came from: Kafka position plus its index in a batch message (or -1)."""

    topic: str
    partition: int
    offset: int
    index: int = -1


def alert_id(stream_id: str, origin: Origin) -> str:
    """Deterministic id of the alert for the reading at ``origin``.

    >>> a = alert_id("pump-1", Origin("sensor-readings", 3, 1042))
    >>> a == alert_id("pump-1", Origin("sensor-readings", 3, 1042)), len(a)
    (True, 32)
    """
    key = (
        f"{stream_id}\x00{origin.topic}\x00{origin.partition}\x00{origin.offset}\x00{origin.index}"
    )
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


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
    top_k: int = 3,
) -> dict[str, Any]:
    """The alert document for one anomalous reading. ``expected``/``errors`` are (F,)."""
    order = np.argsort(-np.abs(errors), kind="stable")[: min(top_k, len(features))]
    contrib = [
        {
            "feature": features[i],
            "expected": round(float(expected[i]), 6),
            "observed": None if observed[i] != observed[i] else observed[i],  # nan -> null
            "error": round(float(errors[i]), 4),
        }
        for i in order.tolist()
        if errors[i] != 0.0
    ]
    return {
        "alert_id": alert_id(stream_id, origin),
        "stream_id": stream_id,
        "ts": iso_ms(ts_ms),
        "detected_at": iso_ms(detected_ms),
        "score": round(score, 4),
        "likelihood": round(likelihood, 6),
        "threshold": threshold,
        "model": {"name": model_name, "version": model_version},
        "contributions": contrib,
        "source": {
            "topic": origin.topic,
            "partition": origin.partition,
            "offset": origin.offset,
            "index": origin.index,
        },
    }
