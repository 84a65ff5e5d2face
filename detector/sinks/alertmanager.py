"""Incident events -> Alertmanager v2 alerts (``POST /api/v2/alerts`` bodies); pure.

Alertmanager identifies an alert by its whole label set, so the labels are what an
operator routes on — ``alertname``, ``model``, ``rule``, ``severity`` — plus the
``incident_id`` (an opaque hash): without it every stream's incident of one model and rule
would merge into one alert, and one stream's recovery would resolve them all. The stream
id is an annotation; a label only where ``stream_label`` names one (an Alertmanager label
is no Prometheus series, but operators asked to keep it out of routing by default).

An ``open`` event maps to a firing alert whose ``endsAt`` is ``hold_s`` ahead: the sink
re-posts it while the incident is open (:mod:`detector.sinks.amsink`). A ``resolved``
event maps to the same labels with ``endsAt`` at the resolving reading's time. Its
``rules`` are every rule that flagged the incident, the opening one among them but not
always first; where the opening rule is unknown, one resolved alert is made per rule so
that one of them matches the firing alert (the others resolve nothing and notify nobody).

>>> opts = AlertOptions()
>>> doc = {"event": "open", "incident_id": "ab12", "stream_id": "pump-1",
...        "ts": "2026-11-21T10:00:00.123Z", "rule": "error", "score": 7.5,
...        "model": {"name": "pumps", "version": 3}, "contributions": []}
>>> [a] = to_alerts(doc, opts, now_ms=1795255200123)
>>> sorted(a["labels"].items())  # doctest: +NORMALIZE_WHITESPACE
[('alertname', 'AnomalydIncident'), ('incident_id', 'ab12'), ('model', 'pumps'),
 ('rule', 'error'), ('severity', 'warning')]
>>> a["annotations"]["stream_id"], a["startsAt"], a["endsAt"]
('pump-1', '2026-11-21T10:00:00.123Z', '2026-11-22T10:00:00.123Z')
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from detector.core.timefmt import iso_ms

__all__ = ["ALERTNAME", "RESERVED_LABELS", "AlertOptions", "to_alerts"]

ALERTNAME = "AnomalydIncident"
#: The labels every alert carries; ``stream_label`` may not reuse one.
RESERVED_LABELS = ("alertname", "incident_id", "model", "rule", "severity")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@dataclass(frozen=True)
class AlertOptions:
    """How events become alerts.

    ``stream_label``: the label that carries the stream id, or None (annotation only).
    ``hold_s``: how long a firing alert lasts in Alertmanager unless posted again.
    """

    severity: str = "warning"
    stream_label: str | None = None
    hold_s: float = 24 * 3600.0
    generator_url: str | None = None

    def __post_init__(self) -> None:
        name = self.stream_label
        if name is not None and (not _LABEL.fullmatch(name) or name in RESERVED_LABELS):
            raise ValueError(
                f"stream_label={name!r}: use a label name ([a-zA-Z_][a-zA-Z0-9_]*) other "
                f"than {', '.join(RESERVED_LABELS)}"
            )


def to_alerts(doc: Mapping[str, Any], opts: AlertOptions, now_ms: int) -> list[dict[str, Any]]:
    """The alerts that post ``doc`` (an ``open`` or ``resolved`` event); ``now_ms`` wall time."""
    if doc.get("event") == "resolved":
        rules = [str(r) for r in doc.get("rules") or []] or ["error"]
        return [resolved_alert(doc, opts, now_ms, rule) for rule in rules]
    return [firing_alert(doc, opts, now_ms)]


def labels(doc: Mapping[str, Any], opts: AlertOptions, rule: str) -> dict[str, str]:
    """The alert's identity: routing labels, the incident, the stream only if configured."""
    out = {
        "alertname": ALERTNAME,
        "model": str(doc["model"]["name"]),
        "rule": rule,
        "severity": opts.severity,
        "incident_id": str(doc["incident_id"]),
    }
    if opts.stream_label is not None:
        out[opts.stream_label] = str(doc["stream_id"])
    return out


def firing_alert(doc: Mapping[str, Any], opts: AlertOptions, now_ms: int) -> dict[str, Any]:
    """An ``open`` event as a firing alert, lasting ``hold_s`` from ``now_ms``."""
    model = doc["model"]
    top = ", ".join(f"{c['feature']} (error {c['error']})" for c in doc.get("contributions") or [])
    notes = {
        "summary": (
            f"Anomalous readings on stream {doc['stream_id']} "
            f"(model {model['name']} v{model['version']}, rule {doc['rule']})"
        ),
        "stream_id": str(doc["stream_id"]),
        "incident_id": str(doc["incident_id"]),
        "model_version": str(model["version"]),
        "score": str(doc.get("score", "")),
        "top_features": top,
    }
    return _alert(
        labels(doc, opts, str(doc["rule"])),
        notes,
        starts=str(doc["ts"]),
        ends=iso_ms(now_ms + int(opts.hold_s * 1000)),
        opts=opts,
    )


def resolved_alert(
    doc: Mapping[str, Any], opts: AlertOptions, now_ms: int, rule: str
) -> dict[str, Any]:
    """A ``resolved`` event as ``rule``'s alert, ended at the resolving reading's time.

    Never later than ``now_ms``: a reading stamped ahead of this clock would otherwise
    keep the alert firing until its time comes.
    """
    model = doc["model"]
    top = ", ".join(
        f"{f['feature']} (peak {f['peak_error']})" for f in doc.get("top_features") or []
    )
    notes = {
        "summary": (
            f"Stream {doc['stream_id']} back to normal ({doc.get('reason', 'recovered')}) "
            f"after {doc.get('duration_s', '?')} s (model {model['name']} v{model['version']})"
        ),
        "stream_id": str(doc["stream_id"]),
        "incident_id": str(doc["incident_id"]),
        "model_version": str(model["version"]),
        "peak_score": str(doc.get("peak_score", "")),
        "reason": str(doc.get("reason", "recovered")),
        "top_features": top,
    }
    ends = str(doc["ts"]) if _ms(str(doc["ts"])) <= now_ms else iso_ms(now_ms)
    return _alert(
        labels(doc, opts, rule), notes, starts=str(doc["opened_ts"]), ends=ends, opts=opts
    )


def _alert(
    labels: dict[str, str], notes: dict[str, str], *, starts: str, ends: str, opts: AlertOptions
) -> dict[str, Any]:
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": {k: v for k, v in notes.items() if v},
        "startsAt": starts,
        "endsAt": ends,
    }
    if opts.generator_url:
        alert["generatorURL"] = opts.generator_url
    return alert


def _ms(text: str) -> int:
    """Milliseconds since the epoch of an event's ISO-8601 UTC time."""
    return int(
        datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp() * 1000
    )
