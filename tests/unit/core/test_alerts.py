"""Alert documents: deterministic ids and plain JSON."""

from __future__ import annotations

import numpy as np
import orjson
from hypothesis import given
from hypothesis import strategies as st

from detector.core.alerts import Origin, alert_id, build_alert, top_errors
from detector.core.timefmt import TS_MAX_MS, TS_MIN_MS, iso_ms


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


@given(st.integers(TS_MIN_MS, TS_MAX_MS))
def test_alert_times_are_the_iso_text_numpy_writes(ms: int) -> None:
    # The contract's format (millisecond ISO-8601 with Z), as numpy wrote it before.
    assert iso_ms(ms) == str(np.datetime_as_string(np.datetime64(ms, "ms"), unit="ms")) + "Z"


errors = st.lists(
    st.one_of(st.floats(-1e6, 1e6, width=32), st.just(0.0), st.just(float("nan"))),
    min_size=1,
    max_size=48,
)


@given(errors, st.integers(1, 5))
def test_top_contributions_largest_first_ties_in_feature_order(e: list[float], k: int) -> None:
    # The order a stable argsort of -|error| gives: an alert names the same features.
    want = np.argsort(-np.abs(np.array(e)), kind="stable")[:k].tolist()
    assert top_errors(e, k) == want
