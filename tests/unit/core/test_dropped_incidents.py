"""An open incident whose stream's state is dropped is closed once, with the reason, by the
engine's ``take_dropped``; a stream handed to another worker (revocation) keeps its incident.
"""

from __future__ import annotations

import numpy as np

from detector.core.alerts import incident_id
from detector.core.bundle import ModelBundle
from detector.core.engine import Engine
from detector.core.events import dropped_event
from detector.core.incidents import IncidentConfig
from detector.core.scoring import ScoringConfig
from tests.unit.factories import make_bundle

T0 = 1_700_000_000_000


def _bundle(features: int = 2, hidden: int = 8) -> ModelBundle:
    # Every reading is over the threshold: each stream's first reading opens an incident.
    scoring = ScoringConfig(
        threshold=-1e9, warmup=0, protect_state=False, incidents=IncidentConfig(resolve_after=5)
    )
    return make_bundle(features=features, hidden=hidden, layers=1, scoring=scoring)


def _feed(eng: Engine, ids: list[str], t: int, now_ms: int = T0) -> None:
    vals = np.ones((len(ids), len(eng.bundle.features)), np.float32)
    eng.process(ids, np.full(len(ids), T0 + 1000 * t, np.int64), vals, now_ms=now_ms)


def test_a_stream_evicted_to_make_room_closes_its_incident_once() -> None:
    eng = Engine(_bundle(), max_streams=2)
    _feed(eng, ["a", "b"], 0)
    _feed(eng, ["a", "b"], 1)
    assert eng.take_dropped() == []
    _feed(eng, ["c"], 2, now_ms=T0 + 10)  # full: "a" and "b" tie; one of them goes
    (d, b), *rest = eng.take_dropped()
    assert rest == [] and eng.take_dropped() == []
    assert d.reason == "evicted" and d.stream_id in {"a", "b"} and b is eng.bundle
    assert (d.opened_ms, d.last_ts_ms, d.readings) == (T0, T0 + 1000, 2)
    doc = dropped_event(d, b, now_ms=T0 + 5000)
    assert doc["event"] == "resolved" and doc["reason"] == "evicted" and doc["source"] is None
    assert doc["incident_id"] == incident_id(d.stream_id, T0)
    assert doc["alert_id"] == dropped_event(d, b, now_ms=0)["alert_id"]  # a replay repeats it


def test_an_idle_stream_expires_with_its_incident_closed() -> None:
    eng = Engine(_bundle(), max_streams=10)
    _feed(eng, ["a", "b"], 0, now_ms=T0)
    _feed(eng, ["b"], 1, now_ms=T0 + 60_000)
    assert eng.store.evict_idle(now_ms=T0 + 90_000, ttl_ms=45_000) == ["a"]
    assert [(d.stream_id, d.reason) for d, _ in eng.take_dropped()] == [("a", "expired")]


def test_a_revoked_stream_keeps_its_incident_for_its_next_owner() -> None:
    eng = Engine(_bundle(), max_streams=10)
    _feed(eng, ["a"], 0)
    assert eng.store.evict(["a"]) == ["a"]
    assert eng.take_dropped() == []


def test_a_model_of_another_shape_closes_every_open_incident_under_the_old_model() -> None:
    old = _bundle()
    eng = Engine(old, max_streams=10)
    _feed(eng, ["a", "b"], 0)
    assert eng.swap(_bundle(features=3)) is False
    got = eng.take_dropped()
    assert sorted(d.stream_id for d, _ in got) == ["a", "b"]
    assert all(d.reason == "model_change" and b is old for d, b in got)


def test_no_incident_no_event() -> None:
    scoring = ScoringConfig(threshold=1e9, warmup=0, incidents=IncidentConfig())
    eng = Engine(make_bundle(features=2, hidden=8, layers=1, scoring=scoring), max_streams=1)
    _feed(eng, ["a"], 0)
    _feed(eng, ["b"], 1)  # evicts "a", which had no incident open
    assert eng.take_dropped() == []


def test_a_reload_that_turns_incidents_off_closes_the_open_ones() -> None:
    # The streams keep their state (same shape), but the new model alerts per reading: its
    # open incidents were never resolved (an operator's pages stayed open for good).
    eng = Engine(_bundle(), max_streams=4)
    _feed(eng, ["a", "b"], 0)
    assert eng.open_incidents() == 2
    per_reading = ScoringConfig(threshold=-1e9, warmup=0, protect_state=False, incidents=None)
    assert eng.swap(make_bundle(features=2, hidden=8, layers=1, scoring=per_reading)) is True
    closed = eng.take_dropped()
    assert sorted((d.stream_id, d.reason) for d, _ in closed) == [
        ("a", "model_change"),
        ("b", "model_change"),
    ]
    _feed(eng, ["a", "b"], 1)
    assert eng.take_dropped() == [] and len(eng.store) == 2  # kept, none closed twice
