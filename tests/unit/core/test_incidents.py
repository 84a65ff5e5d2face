"""Incidents: one open per deviation, extended while it lasts, resolved after a calm run."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import torch

from detector.core.alerts import Origin, build_alert, build_resolved, incident_id, resolved_id
from detector.core.incidents import (
    HOLD_BLOCKS,
    INCIDENT_COLUMNS,
    IncidentConfig,
    incident_step,
    rule_names,
)

F = 2


def run(flags: list[int], rules: list[int] | None = None, resolve_after: int = 3) -> list[dict]:
    """One stream through ``incident_step``; one dict of events per reading."""
    block = torch.zeros(1, INCIDENT_COLUMNS + F)
    out = []
    for t, f in enumerate(flags):
        r = (rules or [1] * len(flags))[t]
        st = incident_step(
            block,
            torch.tensor([bool(f)]),
            torch.tensor([float(r if f else 0)]),
            torch.tensor([5.0 + t if f else 0.5]),
            torch.tensor([[3.0 * f, -1.0 * f]]),
            torch.tensor([True]),
            torch.tensor([1_795_219_200_000 + 1000 * t]),
            IncidentConfig(resolve_after=resolve_after),
        )
        block = st.block
        out.append(
            {
                "opened": bool(st.opened[0]),
                "inside": bool(st.inside[0]),
                "resolved": bool(st.resolved[0]),
                "opened_ms": int(st.opened_ms[0]),
                "readings": int(st.readings[0]),
                "flagged": int(st.flagged[0]),
                "peak": float(st.peak[0]),
                "rules": int(st.rules[0]),
            }
        )
    return out


def test_a_deviation_opens_once_and_resolves_once() -> None:
    flags = [0, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    ev = run(flags)
    assert [e["opened"] for e in ev].count(True) == 1 and ev[1]["opened"]
    resolved = [i for i, e in enumerate(ev) if e["resolved"]]
    assert resolved == [9]  # three normal readings after the last flagged one (6)
    assert [e["inside"] for e in ev] == [False] + [True] * 9 + [False, False]
    end = ev[9]
    assert end["readings"] == 9 and end["flagged"] == 5
    assert end["peak"] == 5.0 + 6 and end["opened_ms"] == 1_795_219_200_000 + 1000


def test_a_new_deviation_after_resolution_opens_a_new_incident() -> None:
    ev = run([1, 0, 0, 1, 0, 0], resolve_after=2)
    assert [e["opened"] for e in ev] == [True, False, False, True, False, False]
    assert ev[2]["resolved"] and ev[5]["resolved"]


def test_rules_accumulate_over_the_incident() -> None:
    ev = run([1, 1, 0, 0], rules=[1, 4, 0, 0], resolve_after=2)
    assert ev[3]["resolved"] and rule_names(ev[3]["rules"]) == ["error", "sustained"]


def test_open_time_survives_float32_exactly() -> None:
    ev = run([1, 0], resolve_after=1)
    assert ev[1]["opened_ms"] == 1_795_219_200_000


def test_events_are_plain_json_with_ids_that_tie_them() -> None:
    common = {"stream_id": "s", "model_name": "m", "model_version": 1, "features": ("a", "b")}
    op = build_alert(
        ts_ms=1000,
        origin=Origin("t", 0, 7),
        detected_ms=1005,
        score=9.0,
        likelihood=1.0,
        threshold=4.0,
        expected=np.array([1.0, 2.0]),
        observed=(1.0, float("nan")),
        errors=np.array([3.0, 0.0]),
        rule="flatline",
        **common,
    )
    res = build_resolved(
        ts_ms=9000,
        origin=Origin("t", 0, 15),
        detected_ms=9001,
        opened_ms=1000,
        readings=9,
        flagged=4,
        peak=12.5,
        rules=["flatline", "error"],
        threshold=4.0,
        feature_peak=np.array([3.0, 0.0]),
        **common,
    )
    op, res = orjson.loads(orjson.dumps(op)), orjson.loads(orjson.dumps(res))
    assert op["event"] == "open" and res["event"] == "resolved"
    assert op["incident_id"] == res["incident_id"] == incident_id("s", 1000)
    assert op["alert_id"] != res["alert_id"]
    assert res["duration_s"] == 8.0 and res["top_features"] == [{"feature": "a", "peak_error": 3.0}]
    assert op["rule"] == "flatline" and op["schema_version"] == res["schema_version"] == 2


def test_an_incident_has_one_closing_id_whichever_reading_or_drop_closed_it() -> None:
    """A replay after a crash may resolve a near-tie a reading later, or a stream's state
    may be dropped with the incident open in one run and not in another: a consumer that
    de-duplicates on ``alert_id`` still sees one end per incident."""
    common: dict[str, Any] = {
        "stream_id": "s",
        "detected_ms": 0,
        "opened_ms": 1000,
        "flagged": 4,
        "peak": 12.5,
        "rules": ["error"],
        "threshold": 4.0,
        "model_name": "m",
        "model_version": 1,
        "features": ("a", "b"),
        "feature_peak": np.array([3.0, 0.0]),
    }
    at_15 = build_resolved(ts_ms=9000, origin=Origin("t", 0, 15), readings=9, **common)
    at_16 = build_resolved(ts_ms=9500, origin=Origin("t", 0, 16), readings=10, **common)
    evicted = build_resolved(ts_ms=9000, origin=None, readings=9, reason="evicted", **common)
    assert at_15["alert_id"] == at_16["alert_id"] == evicted["alert_id"]
    assert at_15["alert_id"] == resolved_id(incident_id("s", 1000))
    other = build_resolved(
        ts_ms=9000, origin=Origin("t", 0, 15), readings=9, **common | {"opened_ms": 2000}
    )
    assert other["alert_id"] != at_15["alert_id"]


# -- held open while the stream stays away ----------------------------------------------


def held_run(levels: np.ndarray, flags: set[int], cfg: IncidentConfig) -> list[dict]:
    """One stream of one channel at ``levels`` (scaler units), flagged at ``flags``."""
    block = torch.zeros(1, INCIDENT_COLUMNS + 1)
    hold = torch.zeros(1, HOLD_BLOCKS)
    out = []
    for t, v in enumerate(levels.tolist()):
        f = t in flags
        st = incident_step(
            block,
            torch.tensor([f]),
            torch.tensor([1.0 if f else 0.0]),
            torch.tensor([6.0 if f else 0.5]),
            torch.tensor([[6.0 if f else 0.5]]),
            torch.tensor([True]),
            torch.tensor([1_795_219_200_000 + 1000 * t]),
            cfg,
            x=torch.tensor([[v]]),
            hold=hold,
        )
        block, hold = st.block, st.hold
        assert hold is not None
        out.append({"opened": bool(st.opened[0]), "resolved": bool(st.resolved[0])})
    return out


def _events(ev: list[dict], what: str) -> list[int]:
    return [t for t, e in enumerate(ev) if e[what]]


def test_a_state_that_persists_is_one_incident_with_its_return() -> None:
    # The model takes a shut valve for normal after a reading: only its start and its
    # end are flagged. Held open, they are one incident, resolved after the return.
    rng = np.random.default_rng(0)
    levels = rng.normal(0.0, 0.3, 700)
    levels[400:600] += 5.0
    ev = held_run(levels, {400, 600}, IncidentConfig(resolve_after=10))
    assert _events(ev, "opened") == [400]
    assert _events(ev, "resolved") == [610]
    apart = held_run(levels, {400, 600}, IncidentConfig(resolve_after=10, hold=0))
    assert _events(apart, "opened") == [400, 600]  # without the hold: two pages


def test_a_cycle_the_reference_has_seen_does_not_hold() -> None:
    t = np.arange(1200)
    levels = 2.0 * np.sin(2 * np.pi * t / 90)  # a duty cycle's swing, seen from the start
    ev = held_run(levels, {700}, IncidentConfig(resolve_after=10))
    assert _events(ev, "resolved") == [710]


def test_a_new_normal_is_held_at_most_hold_max_readings() -> None:
    levels = np.r_[np.zeros(300), np.full(500, 8.0)]
    ev = held_run(levels, {300}, IncidentConfig(resolve_after=10, hold_max=100))
    assert _events(ev, "opened") == [300] and _events(ev, "resolved") == [399]
