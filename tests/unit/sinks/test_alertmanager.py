"""The Alertmanager sink: events -> alerts, posted only after Kafka has them, retried."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from detector.config import Settings
from detector.core.alerts import Origin, build_alert, build_resolved
from detector.errors import BrokerError
from detector.kafka.memory import MemoryBroker, MemoryTransport
from detector.kafka.transport import TopicPartition
from detector.observability.metrics import Metrics
from detector.sinks.alertmanager import AlertOptions, to_alerts
from detector.sinks.amsink import (
    AlertmanagerSink,
    AlertmanagerTee,
    HttpPoster,
    with_alertmanager,
)
from detector.sinks.settings import AlertmanagerSettings

ROOT = Path(__file__).resolve().parents[3]
T0 = 1_795_255_200_000  # 2026-11-21T10:00:00Z


def open_doc(stream: str = "pump-1", ts_ms: int = T0, rule: str = "error") -> dict[str, Any]:
    return build_alert(
        stream_id=stream,
        ts_ms=ts_ms,
        origin=Origin("sensor-readings", 0, 7),
        detected_ms=ts_ms,
        score=9.5,
        likelihood=0.999,
        threshold=4.0,
        model_name="pumps",
        model_version=3,
        features=("temp", "rpm"),
        expected=np.array([1.0, 2.0]),
        observed=(5.0, 2.0),
        errors=np.array([4.0, 0.0]),
        rule=rule,
    )


def resolved_doc(
    stream: str = "pump-1", opened_ms: int = T0, rules: tuple[str, ...] = ("error",)
) -> dict[str, Any]:
    return build_resolved(
        stream_id=stream,
        ts_ms=opened_ms + 60_000,
        origin=Origin("sensor-readings", 0, 70),
        detected_ms=opened_ms + 60_000,
        opened_ms=opened_ms,
        readings=60,
        flagged=3,
        peak=9.5,
        rules=list(rules),
        threshold=4.0,
        model_name="pumps",
        model_version=3,
        features=("temp", "rpm"),
        feature_peak=np.array([4.0, 0.5]),
    )


class FakeAlertmanager:
    """A poster answering ``statuses`` in turn (then 200); keeps what it accepted."""

    def __init__(self, *statuses: int | OSError) -> None:
        self.statuses = list(statuses)
        self.accepted: list[dict[str, Any]] = []
        self.calls = 0

    def __call__(self, body: bytes) -> tuple[int, str]:
        self.calls += 1
        status = self.statuses.pop(0) if self.statuses else 200
        if isinstance(status, OSError):
            raise status
        if status == 200:
            self.accepted += orjson.loads(body)
        return status, "" if status == 200 else "bad things"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_sink(am: FakeAlertmanager, clock: Clock, metrics: Metrics, **kw: Any) -> AlertmanagerSink:
    opts = AlertOptions(stream_label=kw.pop("stream_label", None))
    return AlertmanagerSink(opts, am, metrics, clock=lambda: T0 / 1000 + 120, monotonic=clock, **kw)


def posts(m: Metrics, result: str) -> float | None:
    return m.registry.get_sample_value("anomalyd_alertmanager_posts_total", {"result": result})


# -- mapping ----------------------------------------------------------------------------


def test_labels_route_on_model_rule_severity_and_never_carry_the_stream_by_default() -> None:
    [a] = to_alerts(open_doc("pump-1"), AlertOptions(), now_ms=T0)
    assert set(a["labels"]) == {"alertname", "model", "rule", "severity", "incident_id"}
    assert "pump-1" not in json.dumps(a["labels"])
    assert a["labels"]["model"] == "pumps" and a["labels"]["severity"] == "warning"
    assert a["annotations"]["stream_id"] == "pump-1"
    assert "temp" in a["annotations"]["top_features"]
    assert a["startsAt"] == "2026-11-21T10:00:00.000Z"
    assert a["endsAt"] == "2026-11-22T10:00:00.000Z"  # the hold, re-posted while open


def test_the_stream_is_a_label_only_where_configured() -> None:
    [a] = to_alerts(open_doc("pump-1"), AlertOptions(stream_label="stream"), now_ms=T0)
    assert a["labels"]["stream"] == "pump-1"
    with pytest.raises(ValueError, match="stream_label"):
        AlertOptions(stream_label="rule")
    with pytest.raises(ValueError, match="stream_label"):  # caught by `config check` too
        AlertmanagerSettings(url="http://am:9093", stream_label="incident_id")


def test_two_streams_incidents_are_two_alerts() -> None:
    a = to_alerts(open_doc("pump-1"), AlertOptions(), T0)[0]["labels"]
    b = to_alerts(open_doc("pump-2"), AlertOptions(), T0)[0]["labels"]
    assert a != b  # Alertmanager would merge equal label sets into one alert


def test_resolved_ends_at_the_resolving_reading_and_matches_the_firing_labels() -> None:
    firing = to_alerts(open_doc(rule="sustained"), AlertOptions(), T0)[0]
    resolved = to_alerts(resolved_doc(rules=("error", "sustained")), AlertOptions(), T0 + 90_000)
    assert firing["labels"] in [r["labels"] for r in resolved]  # one of them resolves it
    assert {r["endsAt"] for r in resolved} == {"2026-11-21T10:01:00.000Z"}
    assert resolved[0]["startsAt"] == firing["startsAt"]
    # A resolving reading stamped ahead of the clock ends the alert now, not later.
    early = to_alerts(resolved_doc(), AlertOptions(), T0 + 1000)[0]
    assert early["endsAt"] == "2026-11-21T10:00:01.000Z"


# -- the sink and the tee ---------------------------------------------------------------


def test_a_revoked_partition_s_incidents_are_left_to_their_next_owner() -> None:
    # Re-posting them from here would fire them again after the new owner resolved them.
    am, clock, m = FakeAlertmanager(), Clock(), Metrics(CollectorRegistry())
    mem = MemoryTransport(MemoryBroker({"sensor-readings": 2}))
    sink = make_sink(am, clock, m, resend_interval_s=60)
    tee = AlertmanagerTee(mem, sink, "anomaly-alerts", after_commit=False)
    seen: list[list[TopicPartition]] = []
    tee.subscribe("sensor-readings", lambda tps: None, seen.append)
    tee.poll(0, 10)  # the memory transport assigns both partitions
    tee.send("anomaly-alerts", b"pump-1", orjson.dumps(open_doc("pump-1")))  # partition 0
    tee.flush()
    mem.reassign([1])  # partition 0 moves to another worker, inside the next poll
    tee.poll(0, 10)
    assert seen and TopicPartition("sensor-readings", 0) in seen[-1]
    clock.t += 61
    tee.poll(0, 10)
    assert len(am.accepted) == 1  # the opening only: no re-post of pump-1's incident


def test_alerts_are_posted_only_after_kafka_acknowledged_them() -> None:
    am, clock, m = FakeAlertmanager(), Clock(), Metrics(CollectorRegistry())
    mem = MemoryTransport(MemoryBroker())
    tee = AlertmanagerTee(mem, make_sink(am, clock, m), "anomaly-alerts", after_commit=False)
    tee.send("anomaly-alerts", b"pump-1", orjson.dumps(open_doc()))
    tee.send("sensor-readings.dlq", b"x", b"not an alert")
    assert am.accepted == []
    mem.fail("flush")
    with pytest.raises(BrokerError):
        tee.flush()
    assert am.accepted == []  # Kafka failed: Alertmanager must not be ahead of the topic
    tee.flush()
    assert [a["labels"]["rule"] for a in am.accepted] == ["error"]
    assert posts(m, "ok") == 1


def test_exactly_once_posts_after_the_commit_and_never_an_aborted_transaction() -> None:
    am, clock, m = FakeAlertmanager(), Clock(), Metrics(CollectorRegistry())
    mem = MemoryTransport(MemoryBroker(), transactional=True)
    tee = AlertmanagerTee(mem, make_sink(am, clock, m), "anomaly-alerts", after_commit=True)
    tee.send("anomaly-alerts", b"pump-1", orjson.dumps(open_doc("pump-1")))
    tee.flush()
    assert am.accepted == []
    mem.fail("commit")
    with pytest.raises(BrokerError):
        tee.commit({})
    tee.send("anomaly-alerts", b"pump-2", orjson.dumps(open_doc("pump-2")))
    tee.commit({})
    assert [a["annotations"]["stream_id"] for a in am.accepted] == ["pump-2"]


def test_an_unreachable_alertmanager_is_retried_with_backoff_and_nothing_is_lost() -> None:
    am = FakeAlertmanager(OSError("connection refused"), 503)
    clock, m = Clock(), Metrics(CollectorRegistry())
    sink = make_sink(am, clock, m)
    sink.add(open_doc())
    sink.acknowledged()
    assert (am.accepted, posts(m, "failed")) == ([], 1)
    sink.tick()
    assert am.calls == 1  # backing off: no POST on every turn
    clock.t += 1.5
    sink.tick()  # 503: retried, fails again, waits longer
    clock.t += 1.5
    sink.tick()
    assert am.calls == 2
    clock.t += 1.0
    sink.tick()
    assert [a["annotations"]["stream_id"] for a in am.accepted] == ["pump-1"]
    assert (posts(m, "failed"), posts(m, "ok")) == (2, 1)


def test_rejected_and_overflowing_alerts_are_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    am, clock, m = FakeAlertmanager(400), Clock(), Metrics(CollectorRegistry())
    sink = make_sink(am, clock, m, max_pending=2)
    sink.add(open_doc())
    sink.acknowledged()
    dropped = "anomalyd_alertmanager_dropped_alerts_total"
    assert (posts(m, "rejected"), m.registry.get_sample_value(dropped)) == (1, 1)
    am.statuses = [OSError("down")] * 5
    clock.t += 100
    for s in ("a", "b", "c"):
        sink.add(open_doc(s))
    sink.acknowledged()
    assert m.registry.get_sample_value(dropped) == 2  # max_pending=2: the oldest given up
    assert "gave up 1 alerts" in caplog.text and "max_pending=2" in caplog.text


def test_alerts_per_reading_end_by_themselves_and_are_not_reposted() -> None:
    # A model without incidents sends no `resolved`: its alerts were re-posted for ever,
    # each ending a day later, so every anomalous reading stayed firing.
    am, clock, m = FakeAlertmanager(), Clock(), Metrics(CollectorRegistry())
    sink = make_sink(am, clock, m, resend_interval_s=60, incidents=lambda: False)
    sink.add(open_doc("pump-1"))
    sink.acknowledged()
    clock.t += 61
    sink.tick()
    [alert] = am.accepted
    assert alert["endsAt"] == "2026-11-21T10:03:00.000Z"  # posted at 10:02 (T0 + 120 s), + 60 s


def test_open_incidents_are_reposted_until_resolved() -> None:
    am, clock, m = FakeAlertmanager(), Clock(), Metrics(CollectorRegistry())
    sink = make_sink(am, clock, m, resend_interval_s=60)
    sink.add(open_doc("pump-1", rule="sustained"))
    sink.add(open_doc("pump-2"))
    sink.acknowledged()
    clock.t += 61
    sink.tick()
    assert len(am.accepted) == 4
    sink.add(resolved_doc("pump-1", rules=("error", "sustained")))
    sink.acknowledged()
    resolved = am.accepted[4:]
    assert [a["labels"]["rule"] for a in resolved] == ["sustained"]  # the opener's, known
    clock.t += 61
    sink.tick()
    assert [a["annotations"]["stream_id"] for a in am.accepted[5:]] == ["pump-2"]


def test_off_by_default_and_config_show_masks_the_token(tmp_path: Path) -> None:
    mem = MemoryTransport(MemoryBroker())
    assert with_alertmanager(mem, Settings(), Metrics(CollectorRegistry())) is mem
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMALYD_")}
    env |= {
        "PYTHONPATH": str(ROOT),
        "HOME": str(tmp_path),
        "ANOMALYD_ALERTMANAGER__URL": "http://am:9093",
        "ANOMALYD_ALERTMANAGER__BEARER_TOKEN": "tok-s3cret",
        "ANOMALYD_ALERTMANAGER__STREAM_LABEL": "stream",
    }
    r = subprocess.run(
        [sys.executable, "-m", "detector", "config", "show", "--format", "json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "tok-s3cret" not in r.stdout + r.stderr
    doc = json.loads(r.stdout)["alertmanager"]
    assert doc["bearer_token"]["value"] == "**********"
    assert doc["stream_label"]["value"] == "stream"


def test_a_resend_while_alertmanager_is_down_adds_no_copies_and_close_says_what_is_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    am, clock, m = FakeAlertmanager(*[OSError("down")] * 20), Clock(), Metrics(CollectorRegistry())
    sink = make_sink(am, clock, m, resend_interval_s=1)
    tee = AlertmanagerTee(
        MemoryTransport(MemoryBroker()), sink, "anomaly-alerts", after_commit=False
    )
    tee.send("anomaly-alerts", b"pump-1", orjson.dumps(open_doc()))
    tee.flush()
    for _ in range(10):
        clock.t += 5
        tee.poll(1, 1)
    assert len(sink.pending) == 1
    tee.close()
    assert "stopping with 1 alerts not posted" in caplog.text


def test_the_worker_posts_its_incidents_once_kafka_has_them(tmp_path: Path) -> None:
    from detector.artifacts import publish
    from detector.worker import Worker
    from tests.unit.factories import make_bundle
    from tests.unit.workerkit import ALERTS, produce_reading, worker_settings

    publish(tmp_path / "models", make_bundle(features=2, hidden=8, layers=1))
    am_settings = AlertmanagerSettings(url="http://am.invalid:9093")
    settings = worker_settings(tmp_path).model_copy(update={"alertmanager": am_settings})
    broker = MemoryBroker({"readings": 1})
    for t in range(3):
        produce_reading(broker, "pump-7", t, 0)
    w = Worker(settings, MemoryTransport(broker), Metrics())
    assert isinstance(w.transport, AlertmanagerTee)
    am = FakeAlertmanager()
    w.transport.sink.poster = am
    assert w.start()
    w.turn()
    assert len(broker.messages(ALERTS)) == 3  # incidents off: one alert per reading
    assert [a["annotations"]["stream_id"] for a in am.accepted] == ["pump-7"] * 3
    assert all("pump-7" not in json.dumps(a["labels"]) for a in am.accepted)


def test_a_redirect_is_a_failed_post_not_a_lost_one() -> None:
    # Followed, a 301/302 turned the POST into a GET, which Alertmanager answers 200: the
    # alerts were lost while every metric said "ok".
    seen: list[str] = []

    class Redirecting(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append("POST")
            self.send_response(301)
            self.send_header("Location", "https://am.example/api/v2/alerts")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            seen.append("GET")
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        poster = HttpPoster(AlertmanagerSettings(url=url))
        m, clock = Metrics(CollectorRegistry()), Clock()
        sink = AlertmanagerSink(AlertOptions(), poster, m, monotonic=clock)
        sink.add(open_doc())
        sink.acknowledged()
    finally:
        server.shutdown()
    assert seen == ["POST"]
    assert (posts(m, "ok"), posts(m, "failed"), len(sink.pending)) == (0.0, 1.0, 1)


def test_the_last_try_at_close_does_not_wait_for_the_backoff() -> None:
    am, clock, m = FakeAlertmanager(OSError("down")), Clock(), Metrics(CollectorRegistry())
    sink = make_sink(am, clock, m)
    tee = AlertmanagerTee(
        MemoryTransport(MemoryBroker()), sink, "anomaly-alerts", after_commit=False
    )
    tee.send("anomaly-alerts", b"pump-1", orjson.dumps(open_doc()))
    tee.flush()  # refused: backing off for a second, and the worker stops now
    tee.close()
    assert [a["labels"]["incident_id"] for a in am.accepted] == [open_doc()["incident_id"]]


def test_a_model_renamed_by_a_retrain_resolves_the_alert_its_predecessor_opened() -> None:
    am, clock, m = FakeAlertmanager(), Clock(), Metrics(CollectorRegistry())
    sink = make_sink(am, clock, m)
    renamed = {**resolved_doc(), "model": {"name": "pumps-2026", "version": 1}}
    for doc in (open_doc(), renamed):
        sink.add(doc)
        sink.acknowledged()
    firing, resolved = am.accepted
    assert firing["labels"] == resolved["labels"]  # else the first stays firing for hold_s
