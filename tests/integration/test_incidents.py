"""Incidents against a real broker: one ``open`` and one ``resolved`` event per deviation.

One stream, an untrained small model (test_worker.py's ``_model``), no warm-up and a
threshold of 6. Normal readings sit near the scaler's mean; the deviation sets every feature
to 1e4, thousands of standard deviations away. The test checks that split in its own run
(:func:`_reference`, the engine in-process on the same readings and settings): every normal
reading scores far below the threshold and every deviating one far above it.

The deviation is shorter than ``protect_max`` (30) on purpose: past it the engine takes a
long deviation for a new regime, feeds it to the model and stops flagging it, and the return
to normal is then flagged as a second deviation (docs of ``ScoringConfig.protect_max``).

The worker runs with ``resolve_after`` overridden to 8 (the artifact says 10), so a resolved
incident spans the deviation plus 8 normal readings.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from detector.core.alerts import incident_id
from detector.core.engine import Engine
from detector.core.incidents import IncidentConfig
from detector.core.timefmt import iso_ms
from tests.integration.harness import (
    Topics,
    WorkerProc,
    alerts_of,
    committed,
    drain,
    end_offsets,
    publish,
    wait_caught_up,
)
from tests.integration.test_worker import FEATURES, _model

pytestmark = pytest.mark.integration

THRESHOLD = 6.0
RESOLVE_AFTER = 8
DEVIATION = 1e4  # every feature; the scaler's std is at most 10
MEAN = (50.0, 0.1, 3.0, 20.0)  # test_worker._model's scaler
STD = (10.0, 0.05, 0.5, 5.0)
T0 = 1_795_219_200_000  # epoch ms of the first reading; one reading a second
STREAM = "pump-7"
ENV = {
    "ANOMALYD_ENGINE__THRESHOLD": str(THRESHOLD),
    "ANOMALYD_ENGINE__WARMUP": "0",
    "ANOMALYD_ENGINE__INCIDENTS": "true",
    "ANOMALYD_ENGINE__RESOLVE_AFTER": str(RESOLVE_AFTER),
    "ANOMALYD_ENGINE__MAX_GAP_S": "1e9",
    "ANOMALYD_STATE__INTERVAL_S": "1",
    "ANOMALYD_CONSUMER__SESSION_TIMEOUT_MS": "6000",
}
N, K, M = 60, 24, 20  # normal, deviating, normal again (M > RESOLVE_AFTER)


def _values(n: int, k: int, m: int, seed: int = 3) -> np.ndarray:
    """(n + k + m, F) raw readings: normal noise around the mean, then k at DEVIATION."""
    rng = np.random.default_rng(seed)
    v = np.asarray(MEAN) + 0.3 * np.asarray(STD) * rng.standard_normal((n + k + m, len(MEAN)))
    v[n : n + k] = DEVIATION
    return v.astype(np.float32)


def _messages(values: np.ndarray, start: int = 0) -> list[tuple[bytes | None, bytes]]:
    out: list[tuple[bytes | None, bytes]] = []
    for i, row in enumerate(values.tolist(), start):
        doc = {
            "stream_id": STREAM,
            "ts": T0 + i * 1000,
            "values": dict(zip(FEATURES, row, strict=True)),
        }
        out.append((STREAM.encode(), orjson.dumps(doc)))
    return out


def _reference(models: Path, values: np.ndarray) -> np.ndarray:
    """Scores of ``values`` by the engine in-process, with the worker's overrides."""
    from detector.artifacts import current_version_dir, load_artifact

    b = load_artifact(current_version_dir(models), "cpu")
    sc = dataclasses.replace(
        b.scoring, threshold=THRESHOLD, warmup=0, incidents=IncidentConfig(RESOLVE_AFTER)
    )
    eng = Engine(dataclasses.replace(b, scoring=sc), max_streams=4, device="cpu")
    out = []
    for i, v in enumerate(values):
        ts = T0 + i * 1000
        r = eng.process([STREAM], np.array([ts]), v[None, :], now_ms=ts)
        out.append(float(r.score[0]))
    return np.asarray(out)


def _check_separation(models: Path, values: np.ndarray, k: int) -> np.ndarray:
    s = _reference(models, values)
    normal = np.concatenate([s[:N], s[N + k :]])
    dev = s[N : N + k]
    print(f"\nreference scores: normal max {normal.max():.2f}, deviating min {dev.min():.0f}")
    assert normal.max() < THRESHOLD / 2, "a normal reading would flag: pick another threshold"
    assert dev.min() > THRESHOLD * 100, "a deviating reading would not flag"
    return s


def _events(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """The alerts topic's events, de-duplicated by alert_id (at-least-once redeliveries)."""
    seen: dict[str, dict[str, Any]] = {}
    for a in alerts_of(drain(bootstrap, topic)):
        prev = seen.setdefault(a["alert_id"], a)
        if prev is not a:  # a redelivery repeats the same event
            assert {k: v for k, v in prev.items() if k != "detected_at"} == {
                k: v for k, v in a.items() if k != "detected_at"
            }
    return list(seen.values())


def _check_incident(events: list[dict[str, Any]], k: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Exactly one open and one resolved event, of one incident spanning the deviation."""
    opens = [e for e in events if e["event"] == "open"]
    resolved = [e for e in events if e["event"] == "resolved"]
    assert len(opens) == 1, f"{len(opens)} open events: {opens}"
    assert len(resolved) == 1, f"{len(resolved)} resolved events: {resolved}"
    assert len(events) == 2, f"unexpected events: {events}"
    o, r = opens[0], resolved[0]
    first_dev, resolving = T0 + N * 1000, T0 + (N + k + RESOLVE_AFTER - 1) * 1000
    assert o["schema_version"] == 2 and r["schema_version"] == 2
    assert o["stream_id"] == r["stream_id"] == STREAM
    assert o["rule"] == "error"
    assert o["ts"] == iso_ms(first_dev)
    assert o["incident_id"] == r["incident_id"] == incident_id(STREAM, first_dev)
    assert o["threshold"] == r["threshold"] == THRESHOLD
    assert o["score"] > THRESHOLD * 100
    assert o["source"]["offset"] == N
    assert {c["feature"] for c in o["contributions"]} <= set(FEATURES)
    assert r["ts"] == iso_ms(resolving)
    assert r["source"]["offset"] == N + k + RESOLVE_AFTER - 1
    assert r["opened_ts"] == o["ts"]
    assert r["duration_s"] == (resolving - first_dev) / 1000
    assert r["flagged_readings"] == k
    assert r["readings"] == k + RESOLVE_AFTER
    assert r["rules"] == ["error"]
    assert r["peak_score"] >= o["score"]
    assert r["top_features"] and all(t["peak_error"] > 0 for t in r["top_features"])
    return o, r


@pytest.fixture
def setup(
    kafka_bootstrap: str, make_topic: Callable[..., str], topic_prefix: str, tmp_path: Path
) -> tuple[str, Topics, Path]:
    topics = Topics.named(topic_prefix)
    make_topic(topics.readings.removeprefix(topic_prefix + "."), partitions=2)
    _model(tmp_path / "models")
    return kafka_bootstrap, topics, tmp_path


def _stop(w: WorkerProc) -> None:
    if w.proc is not None and w.proc.poll() is None:
        w.stop(signal.SIGKILL)


def test_a_deviation_is_one_incident_opened_once_and_resolved_once(
    setup: tuple[str, Topics, Path],
) -> None:
    bootstrap, topics, tmp = setup
    values = _values(N, K, M)
    scores = _check_separation(tmp / "models", values, K)
    publish(bootstrap, topics.readings, _messages(values))
    w = WorkerProc(bootstrap, topics, tmp / "models", "g-inc", tmp / "w.log", env=ENV).start()
    try:
        wait_caught_up(bootstrap, "g-inc", topics.readings, worker=w)
        m = w.metrics()
        assert w.stop(signal.SIGTERM) == 0
    finally:
        _stop(w)
    events = _events(bootstrap, topics.alerts)
    o, r = _check_incident(events, K)
    assert o["score"] == pytest.approx(scores[N], rel=1e-3)
    assert r["peak_score"] == pytest.approx(scores[N : N + K].max(), rel=1e-3)
    assert m["anomalyd_readings_total"] == N + K + M
    assert m["anomalyd_incidents_opened_total{rule=error}"] == 1
    assert m["anomalyd_incidents_resolved_total{rule=error}"] == 1
    assert m["anomalyd_alerts_total"] == 2
    assert m["anomalyd_incident_duration_seconds_count"] == 1
    print(
        f"incident: {len(events)} events on the alerts topic, readings {r['readings']}, "
        f"flagged {r['flagged_readings']}, {r['duration_s']}s, peak {r['peak_score']}"
    )


def test_an_incident_survives_a_sigkill_in_the_middle_of_its_deviation(
    setup: tuple[str, Topics, Path],
) -> None:
    bootstrap, topics, tmp = setup
    k1 = K // 2  # deviating readings before the kill
    values = _values(N, K, M, seed=4)
    _check_separation(tmp / "models", values, K)
    before, after = values[: N + k1], values[N + k1 :]
    publish(bootstrap, topics.readings, _messages(before))
    group = "g-inc-kill"
    w1 = WorkerProc(bootstrap, topics, tmp / "models", group, tmp / "w1.log", env=ENV).start()
    try:
        # The open event out, the state checkpointed and the offsets committed past it; the
        # open-incidents gauge (refreshed every 5 s) says the incident is open.
        wait_caught_up(bootstrap, group, topics.readings, worker=w1)
        deadline, gauge = time.monotonic() + 20, 0.0
        while time.monotonic() < deadline:
            gauge = w1.metrics().get("anomalyd_open_incidents", 0.0)
            if gauge == 1:
                break
            time.sleep(0.5)
        assert gauge == 1, w1.tail()
        m1 = w1.metrics()
        w1.send_signal(signal.SIGKILL)
        assert w1.proc is not None and w1.proc.wait(30) == -signal.SIGKILL
    finally:
        _stop(w1)
    pre = _events(bootstrap, topics.alerts)
    assert [e["event"] for e in pre] == ["open"], pre
    ends = {p: e for p, e in end_offsets(bootstrap, topics.readings).items() if e}
    assert committed(bootstrap, group, topics.readings) == ends  # no replay to come
    assert m1["anomalyd_incidents_opened_total{rule=error}"] == 1
    publish(bootstrap, topics.readings, _messages(after, start=N + k1))
    w2 = WorkerProc(bootstrap, topics, tmp / "models", group, tmp / "w2.log", env=ENV).start()
    try:
        wait_caught_up(bootstrap, group, topics.readings, worker=w2)
        m2 = w2.metrics()
        assert w2.stop(signal.SIGTERM) == 0
    finally:
        _stop(w2)
    raw = alerts_of(drain(bootstrap, topics.alerts))
    events = _events(bootstrap, topics.alerts)
    assert len({e["incident_id"] for e in events if e["event"] == "open"}) == 1
    _, r = _check_incident(events, K)
    # The second worker restored the open incident: it opened nothing and resolved it,
    # and it applied only what the first had not (nothing replayed, nothing applied twice).
    assert m2["anomalyd_readings_total"] == len(after)
    assert m2.get("anomalyd_incidents_opened_total{rule=error}", 0) == 0
    assert m2["anomalyd_incidents_resolved_total{rule=error}"] == 1
    assert m2["anomalyd_checkpoint_restore_seconds_count"] >= 1
    print(
        f"kill after {k1} of {K} deviating readings: {len(raw)} records on the alerts topic, "
        f"{len(events)} distinct events, resolved readings {r['readings']}, "
        f"flagged {r['flagged_readings']}; second worker scored {m2['anomalyd_readings_total']:.0f}"
    )
