"""The Alertmanager sink against a real Alertmanager (Debian's ``prometheus-alertmanager``).

The binary is looked up as ``$ANOMALYD_TEST_ALERTMANAGER``, then ``prometheus-alertmanager``
and ``alertmanager`` on PATH. Missing, the tests skip, saying how to install it; with
``ANOMALYD_TEST_REQUIRE_TOOLS=1`` (CI, provisioned by .ci/provision.sh) they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from detector.config import Settings
from detector.kafka.memory import MemoryBroker, MemoryTransport
from detector.kafka.transport import Transport
from detector.observability.metrics import Metrics
from detector.sinks.amsink import with_alertmanager
from tests.unit.sinks.test_alertmanager import open_doc, resolved_doc

_CONFIG = """
route:
  receiver: "null"
  group_by: [alertname, model, rule]
receivers:
  - name: "null"
"""


def _binary() -> str:
    found = os.environ.get("ANOMALYD_TEST_ALERTMANAGER") or next(
        filter(None, map(shutil.which, ("prometheus-alertmanager", "alertmanager"))), None
    )
    if found is None:
        message = (
            "no Alertmanager binary: apt-get install prometheus-alertmanager "
            "(or set ANOMALYD_TEST_ALERTMANAGER to one)"
        )
        if os.environ.get("ANOMALYD_TEST_REQUIRE_TOOLS") == "1":
            pytest.fail(f"{message} (ANOMALYD_TEST_REQUIRE_TOOLS=1)")
        pytest.skip(message)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a fresh Alertmanager (no clustering), stopped after the module."""
    binary, tmp = _binary(), tmp_path_factory.mktemp("alertmanager")
    (tmp / "am.yml").write_text(_CONFIG)
    url = f"http://127.0.0.1:{_free_port()}"
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp / 'am.yml'}",
            f"--storage.path={tmp / 'data'}",
            f"--web.listen-address={url.removeprefix('http://')}",
            "--cluster.listen-address=",  # a lone instance: no gossip port
        ],
        stdout=(tmp / "am.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/-/ready", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (tmp / "am.log").read_text()[-2000:]
                    pytest.fail(f"Alertmanager did not start: {log}")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _active(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(url + "/api/v2/alerts?active=true", timeout=5) as r:
        alerts: list[dict[str, Any]] = orjson.loads(r.read())
    return alerts


def _tee(url: str, metrics: Metrics, **am: Any) -> tuple[Transport, MemoryTransport]:
    mem = MemoryTransport(MemoryBroker())
    settings = Settings(alertmanager={"url": url, **am})
    return with_alertmanager(mem, settings, metrics), mem


def _publish(t: Transport, doc: dict[str, Any]) -> None:
    t.send("anomaly-alerts", str(doc["stream_id"]).encode(), orjson.dumps(doc))
    t.flush()


def test_an_incident_fires_then_resolves_in_alertmanager(alertmanager: str) -> None:
    m = Metrics(CollectorRegistry())
    t, _ = _tee(alertmanager, m)
    now = int(time.time() * 1000) - 5000
    _publish(t, open_doc("pump-1", ts_ms=now, rule="sustained"))

    [alert] = [a for a in _active(alertmanager) if a["annotations"]["stream_id"] == "pump-1"]
    assert alert["status"]["state"] == "active"
    assert {k: v for k, v in alert["labels"].items() if k != "incident_id"} == {
        "alertname": "AnomalydIncident",
        "model": "pumps",
        "rule": "sustained",
        "severity": "warning",
    }
    assert "pump-1" not in orjson.dumps(alert["labels"]).decode()

    # Resolved 1 s after it opened: its reading's time is in the past, so it ends now.
    doc = resolved_doc("pump-1", opened_ms=now, rules=("error", "sustained"))
    doc["ts"] = open_doc(ts_ms=now + 1000)["ts"]
    _publish(t, doc)
    assert [a for a in _active(alertmanager) if a["annotations"]["stream_id"] == "pump-1"] == []
    assert m.registry.get_sample_value("anomalyd_alertmanager_posts_total", {"result": "ok"}) == 2


def test_the_stream_label_when_configured(alertmanager: str) -> None:
    t, _ = _tee(alertmanager, Metrics(CollectorRegistry()), stream_label="stream")
    _publish(t, open_doc("fan-9", ts_ms=int(time.time() * 1000)))
    labels = [a["labels"] for a in _active(alertmanager)]
    assert "fan-9" in [lb.get("stream") for lb in labels]


def test_an_open_incident_is_kept_firing_by_reposting(alertmanager: str) -> None:
    m = Metrics(CollectorRegistry())
    t, _ = _tee(alertmanager, m, hold_s=1.5, resend_interval_s=0.5)
    now = int(time.time() * 1000)
    _publish(t, open_doc("kept-1", ts_ms=now))
    quiet, _ = _tee(alertmanager, m, hold_s=1.5, resend_interval_s=3600)
    _publish(quiet, open_doc("lapsed-1", ts_ms=now))
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:  # the worker's turns: each poll may re-post
        t.poll(10, 10)
        time.sleep(0.1)
    streams = {a["annotations"]["stream_id"] for a in _active(alertmanager)}
    assert "kept-1" in streams
    assert "lapsed-1" not in streams  # Alertmanager ended what nobody re-posted
