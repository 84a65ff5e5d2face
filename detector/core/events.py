"""What a scored batch sends out: incident events and dead-letter headers (pure).

The worker publishes these; ``batch_events`` orders a stream's ``resolved`` event before a
later ``open`` one of the same batch, as they happened.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from detector.core.alerts import build_alert, build_resolved
from detector.core.bundle import ModelBundle
from detector.core.engine import BatchResult, IncidentEvents
from detector.core.incidents import Dropped, rule_names
from detector.core.readings import DecodedBatch, Refused

__all__ = [
    "batch_events",
    "dead_letter_headers",
    "dropped_event",
    "open_event",
    "resolved_event",
]


def batch_events(
    batch: DecodedBatch, res: BatchResult, b: ModelBundle, now_ms: int
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(stream id, event document) of each incident opened or resolved in the batch, in
    batch order (a stream's resolved event before a later open one)."""
    inc = res.incidents
    resolved = inc.resolved if inc is not None else np.zeros(len(res.anomalous), bool)
    for i in np.flatnonzero(res.anomalous | resolved).tolist():
        sid = batch.stream_ids[i]
        if inc is not None and inc.resolved[i]:
            yield sid, resolved_event(batch, inc, i, b, now_ms)
        if res.anomalous[i]:
            yield sid, open_event(batch, res, i, b, now_ms)


def open_event(
    batch: DecodedBatch, res: BatchResult, i: int, b: ModelBundle, now_ms: int
) -> dict[str, Any]:
    rules = rule_names(int(res.rules[i]))
    return build_alert(
        stream_id=batch.stream_ids[i],
        ts_ms=int(batch.ts[i]),
        origin=batch.origins[i],
        detected_ms=now_ms,
        score=float(res.score[i]),
        likelihood=float(res.likelihood[i]),
        threshold=b.scoring.threshold,
        model_name=b.name,
        model_version=b.version,
        features=b.features,
        expected=res.expected[i],
        observed=tuple(batch.values[i].tolist()),
        errors=res.errors[i],
        rule=rules[0] if rules else "error",
    )


def resolved_event(
    batch: DecodedBatch, inc: IncidentEvents, i: int, b: ModelBundle, now_ms: int
) -> dict[str, Any]:
    return build_resolved(
        stream_id=batch.stream_ids[i],
        ts_ms=int(batch.ts[i]),
        origin=batch.origins[i],
        detected_ms=now_ms,
        opened_ms=int(inc.opened_ms[i]),
        readings=int(inc.readings[i]),
        flagged=int(inc.flagged[i]),
        peak=float(inc.peak[i]),
        rules=rule_names(int(inc.rules[i])),
        threshold=b.scoring.threshold,
        model_name=b.name,
        model_version=b.version,
        features=b.features,
        feature_peak=inc.feature_peak[i],
    )


def dropped_event(d: Dropped, b: ModelBundle, now_ms: int) -> dict[str, Any]:
    """The ``resolved`` event of an incident whose stream's state was dropped while it was
    open (``d.reason``); ``b`` the model that scored it."""
    return build_resolved(
        stream_id=d.stream_id,
        ts_ms=d.last_ts_ms,
        origin=None,
        detected_ms=now_ms,
        opened_ms=d.opened_ms,
        readings=d.readings,
        flagged=d.flagged,
        peak=d.peak,
        rules=rule_names(d.rules),
        threshold=b.scoring.threshold,
        model_name=b.name,
        model_version=b.version,
        features=b.features,
        feature_peak=d.feature_peak,
        reason=d.reason,
    )


def dead_letter_headers(r: Refused) -> list[tuple[str, bytes]]:
    return [
        ("reason", r.bad.reason.encode()),
        ("detail", r.bad.detail.encode()[:1024]),
        ("source_topic", r.origin.topic.encode()),
        ("source_partition", str(r.origin.partition).encode()),
        ("source_offset", str(r.origin.offset).encode()),
        ("index", str(-1 if r.bad.item is None else r.bad.item).encode()),
    ]
