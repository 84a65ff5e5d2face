"""The alert-event contract (docs/alert-event.schema.json) and the dead-letter reasons of
docs/architecture.md match what the code emits.

jsonschema is not a dependency: :func:`_errors` checks the subset of JSON Schema 2020-12
the document uses (type, const, enum, required, properties, items, minimum, maximum,
minLength, maxLength, pattern, oneOf and local ``$ref``) and refuses any other keyword,
so the schema cannot grow a rule this test silently skips.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.core.alerts import SCHEMA_VERSION, Origin, build_alert, build_resolved
from detector.core.incidents import RULE_NAMES
from detector.core.readings import REASONS
from tests.alert_schema import SCHEMA
from tests.alert_schema import schema_errors as _errors

DOCS = Path(__file__).resolve().parents[3] / "docs"


def _wire(doc: dict[str, Any]) -> Any:
    """The event as a consumer reads it off the topic."""
    return orjson.loads(orjson.dumps(doc))


_names = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=6, unique=True).map(tuple)
_finite = st.floats(-1e6, 1e6, allow_nan=False)
_ms = st.integers(0, 4_102_444_800_000)  # 1970 to 2100: what the decoder accepts
_stream = st.text(min_size=1, max_size=256)
_origin = st.builds(
    Origin,
    st.text(min_size=1, max_size=20),
    st.integers(0, 999),
    st.integers(0, 2**40),
    st.integers(-1, 9_999),
)


@st.composite
def _open_events(draw: st.DrawFn) -> dict[str, Any]:
    features = draw(_names)
    f = len(features)
    vec = st.lists(_finite, min_size=f, max_size=f)
    observed = draw(st.lists(st.one_of(_finite, st.just(float("nan"))), min_size=f, max_size=f))
    return build_alert(
        stream_id=draw(_stream),
        ts_ms=draw(_ms),
        origin=draw(_origin),
        detected_ms=draw(_ms),
        score=draw(_finite),
        likelihood=draw(st.floats(0, 1)),
        threshold=draw(_finite),
        model_name=draw(st.text(max_size=10)),
        model_version=draw(st.integers(0, 10_000)),
        features=features,
        expected=np.array(draw(vec)),
        observed=tuple(observed),
        errors=np.array(draw(vec)),
        rule=draw(st.sampled_from(RULE_NAMES)),
    )


@st.composite
def _resolved_events(draw: st.DrawFn) -> dict[str, Any]:
    features = draw(_names)
    f = len(features)
    opened = draw(_ms)
    readings = draw(st.integers(1, 10**9))
    # A reading resolved it, or the stream's state was dropped with it open (no reading).
    reason = draw(st.sampled_from(["recovered", "expired", "evicted", "model_change"]))
    return build_resolved(
        stream_id=draw(_stream),
        ts_ms=draw(st.integers(opened, 4_102_444_800_000)),
        origin=draw(_origin) if reason == "recovered" else None,
        reason=reason,
        detected_ms=draw(_ms),
        opened_ms=opened,
        readings=readings,
        flagged=draw(st.integers(0, readings)),
        peak=draw(_finite),
        rules=draw(st.lists(st.sampled_from(RULE_NAMES), unique=True)),
        threshold=draw(_finite),
        model_name=draw(st.text(max_size=10)),
        model_version=draw(st.integers(0, 10_000)),
        features=features,
        feature_peak=np.array(draw(st.lists(st.floats(0, 1e6), min_size=f, max_size=f))),
    )


@settings(max_examples=300, deadline=None)
@given(st.one_of(_open_events(), _resolved_events()))
def test_every_event_the_builders_emit_fits_the_schema(doc: dict[str, Any]) -> None:
    event = _wire(doc)
    assert _errors(event, SCHEMA) == []
    branch = SCHEMA["$defs"][event["event"]]
    assert set(event) == set(branch["properties"]), "an emitted field is not documented"


def test_the_schema_refuses_what_a_consumer_could_not_use() -> None:
    doc = _wire(
        build_resolved(
            stream_id="pump-1",
            ts_ms=2000,
            origin=Origin("readings", 0, 7),
            detected_ms=2500,
            opened_ms=1000,
            readings=12,
            flagged=3,
            peak=9.5,
            rules=["error", "peak"],
            threshold=4.0,
            model_name="pumps",
            model_version=3,
            features=("temp", "rpm"),
            feature_peak=np.array([0.0, 6.0]),
        )
    )
    assert _errors(doc, SCHEMA) == []
    assert _errors({k: v for k, v in doc.items() if k != "incident_id"}, SCHEMA)
    assert _errors({**doc, "readings": "12"}, SCHEMA)
    assert _errors({**doc, "rules": ["made_up"]}, SCHEMA)
    assert _errors({**doc, "event": "open"}, SCHEMA)  # an open event needs other fields
    assert _errors({**doc, "schema_version": 1}, SCHEMA)


def test_the_schema_names_the_current_version_and_rules() -> None:
    for branch in ("open", "resolved"):
        props = SCHEMA["$defs"][branch]["properties"]
        assert props["schema_version"]["const"] == SCHEMA_VERSION
        assert SCHEMA["$defs"][branch]["required"] == list(props)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["$defs"]["rule"]["enum"] == list(RULE_NAMES)


def test_the_documented_dead_letter_reasons_are_the_decoders() -> None:
    text = (DOCS / "architecture.md").read_text()
    start = text.index("## Dead-letter reasons")
    section = text[start : text.index("\n## ", start + 1)]
    documented = re.findall(r"^- `(\w+)`: \S", section, re.M)
    assert documented == list(REASONS)
