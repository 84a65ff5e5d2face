"""Alert documents: deterministic ids and plain JSON."""

from __future__ import annotations

import numpy as np
import orjson

from detector.core.alerts import Origin, alert_id, build_alert


def test_alert_id_is_deterministic_and_position_specific() -> None:
    a = alert_id("s", Origin("t", 0, 1))
    assert a == alert_id("s", Origin("t", 0, 1))
    assert a != alert_id("s", Origin("t", 0, 2)) != alert_id("s", Origin("t", 0, 1, 0))


def test_alert_documents_round_trip_as_json() -> None:
    """The alert stays plain JSON (no NaN) even when a feature was missing."""
    doc = build_alert(
        stream_id="s",
        ts_ms=0,
        origin=Origin("t", 0, 1),
        detected_ms=5,
        score=9.0,
        likelihood=1.0,
        threshold=4.0,
        model_name="m",
        model_version=1,
        features=("a", "b"),
        expected=np.array([1.0, 2.0]),
        observed=(float("nan"), 3.0),
        errors=np.array([0.0, 5.0]),
    )
    back = orjson.loads(orjson.dumps(doc))
    assert back["contributions"] == [
        {"feature": "b", "expected": 2.0, "observed": 3.0, "error": 5.0}
    ]
    assert back["ts"] == "1970-01-01T00:00:00.000Z" and back["source"]["offset"] == 1
