"""The worker against a real broker: nothing lost, bad input dead-lettered, clean shutdown.

With the threshold overridden to -1e9 and no warm-up, every good reading yields exactly one
alert carrying its source position: the set of alert sources must equal the set of
readings published, whatever crashes happened in between.
"""

from __future__ import annotations

import signal
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from detector.artifacts import publish as publish_model
from detector.core.bundle import ModelBundle
from detector.core.model import ModelConfig, ReconstructionLSTM
from detector.core.schema import REASONS
from detector.core.scoring import Scaler, ScoringConfig
from detector.sandbox.messages import to_json_messages
from detector.sandbox.simulation import Fleet, FleetSpec
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

pytestmark = pytest.mark.integration
FEATURES = ("temp", "vibration", "pressure", "current")
ALERT_EVERYTHING = {
    "ANOMALYD_ENGINE__THRESHOLD": "-1e9",
    "ANOMALYD_ENGINE__INCIDENTS": "false",  # one alert per reading: alerts count readings
    "ANOMALYD_ENGINE__WARMUP": "0",
    "ANOMALYD_ENGINE__MAX_GAP_S": "1e9",
}


def _model(model_dir: Path, version_seed: int = 0) -> Path:
    import torch

    torch.manual_seed(version_seed)
    m = ReconstructionLSTM(ModelConfig(len(FEATURES), hidden=16, layers=1)).eval()
    b = ModelBundle(
        "it",
        1,
        FEATURES,
        m,
        Scaler((50.0, 0.1, 3.0, 20.0), (10.0, 0.05, 0.5, 5.0)),
        ScoringConfig(),
    )
    return publish_model(model_dir, b)


def _fleet_messages(
    streams: int, ticks: int, batch: int, seed: int = 1, prefix: str = "pump-"
) -> tuple[list[tuple[bytes | None, bytes]], int]:
    fleet = Fleet(FleetSpec(streams=streams, seed=seed, prefix=prefix))
    msgs: list[tuple[bytes | None, bytes]] = []
    n = 0
    for block in fleet.blocks(ticks):
        msgs += to_json_messages(block, batch)
        n += block.n_readings
    return msgs, n


def _sources(alerts: list[dict]) -> dict[tuple[int, int, int], set[str]]:
    by: dict[tuple[int, int, int], set[str]] = defaultdict(set)
    for a in alerts:
        s = a["source"]
        by[(s["partition"], s["offset"], s["index"])].add(a["alert_id"])
    return by


def _published_sources(bootstrap: str, topic: str) -> set[tuple[int, int, int]]:
    out = set()
    for r in drain(bootstrap, topic):
        doc = orjson.loads(r.value)
        if isinstance(doc, list):
            out |= {(r.partition, r.offset, i) for i in range(len(doc))}
        else:
            out.add((r.partition, r.offset, -1))
    return out


@pytest.fixture
def setup(
    kafka_bootstrap: str, make_topic: Callable[..., str], topic_prefix: str, tmp_path: Path
) -> tuple[str, Topics, Path]:
    topics = Topics.named(topic_prefix)
    make_topic(topics.readings.removeprefix(topic_prefix + "."), partitions=4)
    return kafka_bootstrap, topics, tmp_path


def test_ready_flips_with_model_and_every_reading_is_scored_then_sigterm_exits_zero(
    setup: tuple[str, Topics, Path],
) -> None:
    bootstrap, topics, tmp = setup
    models = tmp / "models"
    w = WorkerProc(
        bootstrap, topics, models, "g-basic", tmp / "w.log", env=ALERT_EVERYTHING
    ).start()
    try:
        deadline = time.monotonic() + 60
        while w.get("/healthz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.3)
        code, body = w.get("/readyz")
        assert (code, body.strip()) == (503, "no model loaded")
        _model(models)  # the trainer publishes; the waiting worker picks it up
        w.wait_ready()
        msgs, n = _fleet_messages(streams=40, ticks=60, batch=1)
        batch_msgs, n2 = _fleet_messages(streams=40, ticks=60, batch=10, seed=2, prefix="fan-")
        publish(bootstrap, topics.readings, msgs + batch_msgs)
        wait_caught_up(bootstrap, "g-basic", topics.readings, worker=w)
        m = w.metrics()
        assert m["anomalyd_readings_total"] == n + n2
        assert m["anomalyd_ready"] == 1
        assert m["anomalyd_model_info{device=cpu,model=it,version=1}"] == 1
        assert m["anomalyd_active_streams"] == 80
        assert m["anomalyd_commits_total"] >= 1
        assert w.stop(signal.SIGTERM) == 0
    finally:
        if w.proc and w.proc.poll() is None:
            w.stop(signal.SIGKILL)
    alerts = alerts_of(drain(bootstrap, topics.alerts))
    assert set(_sources(alerts)) == _published_sources(bootstrap, topics.readings)
    a = alerts[0]
    assert {
        "alert_id",
        "stream_id",
        "ts",
        "detected_at",
        "score",
        "threshold",
        "model",
        "contributions",
        "source",
    } <= set(a)
    assert a["model"] == {"name": "it", "version": 1}
    assert committed(bootstrap, "g-basic", topics.readings) == end_offsets(
        bootstrap, topics.readings
    )
    assert "stopped cleanly" in w.tail()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_restart_mid_stream_loses_nothing(setup: tuple[str, Topics, Path], sig: int) -> None:
    bootstrap, topics, tmp = setup
    _model(tmp / "models")
    msgs, n = _fleet_messages(streams=100, ticks=300, batch=1)
    publish(bootstrap, topics.readings, msgs)
    group = f"g-restart-{sig}"
    env = ALERT_EVERYTHING | {"ANOMALYD_CONSUMER__MAX_POLL_RECORDS": "500"}
    w = WorkerProc(bootstrap, topics, tmp / "models", group, tmp / "w1.log", env=env).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # stop it once it is well into the stream
        if w.get("/readyz")[0] == 200 and w.metrics().get("anomalyd_readings_total", 0) > n / 4:
            break
        time.sleep(0.2)
    code = w.stop(sig)
    assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), w.tail()
    done_before = sum(committed(bootstrap, group, topics.readings).values())
    assert 0 < done_before < n, "the stop must come mid-stream"
    w2 = WorkerProc(bootstrap, topics, tmp / "models", group, tmp / "w2.log", env=env).start()
    try:
        wait_caught_up(bootstrap, group, topics.readings, worker=w2)
        assert w2.stop(signal.SIGTERM) == 0
    finally:
        if w2.proc and w2.proc.poll() is None:
            w2.stop(signal.SIGKILL)
    by_source = _sources(alerts_of(drain(bootstrap, topics.alerts)))
    assert set(by_source) == _published_sources(bootstrap, topics.readings)
    # Redeliveries (at least once) are recognisable: one alert id per source reading.
    assert all(len(ids) == 1 for ids in by_source.values())


BAD: list[tuple[bytes | None, bytes, str]] = [
    (b"p1", b"{not json", "not_json"),
    (b"p1", b"\xff\xfe\x00", "not_json"),
    (b"p1", b"[]", "empty_batch"),
    (b"p1", b"17", "not_object"),
    (None, orjson.dumps({"ts": 1, "values": [1, 2, 3, 4]}), "missing_stream_id"),
    (b"p1", orjson.dumps({"stream_id": 7, "ts": 1, "values": [1, 2, 3, 4]}), "bad_stream_id"),
    (b"p1", orjson.dumps({"stream_id": "p1", "values": [1, 2, 3, 4]}), "missing_ts"),
    (b"p1", orjson.dumps({"stream_id": "p1", "ts": "noon", "values": [1, 2, 3, 4]}), "bad_ts"),
    (b"p1", orjson.dumps({"stream_id": "p1", "ts": -5, "values": [1, 2, 3, 4]}), "bad_ts"),
    (b"p1", orjson.dumps({"stream_id": "p1", "ts": 1}), "missing_values"),
    (b"p1", orjson.dumps({"stream_id": "p1", "ts": 1, "values": 3}), "bad_values"),
    (b"p1", orjson.dumps({"stream_id": "p1", "ts": 1, "values": {"rpm": 3}}), "unknown_feature"),
    (b"p1", orjson.dumps({"stream_id": "p1", "ts": 1, "values": [1, 2]}), "wrong_feature_count"),
    (
        b"p1",
        orjson.dumps({"stream_id": "p1", "ts": 1, "values": [1, "x", 3, 4]}),
        "non_numeric_value",
    ),
    (
        b"p1",
        orjson.dumps({"stream_id": "p1", "ts": 1, "values": [1e300, 2, 3, 4]}),
        "non_finite_value",
    ),
    (b"p1", b"NaN", "not_json"),
    (b"p1", b"x" * 1_020_000, "oversized"),  # past our 1 MB limit, within the broker's
    (b"p1", b"", "not_json"),
    (b"p1", orjson.dumps([{"ts": 1, "values": [1, 2, 3, 4]}] * 10_001), "batch_too_large"),
]


def test_bad_input_is_dead_lettered_with_reasons_and_good_input_scored(
    setup: tuple[str, Topics, Path],
) -> None:
    bootstrap, topics, tmp = setup
    _model(tmp / "models")
    good, n_good = _fleet_messages(streams=10, ticks=40, batch=1)
    mixed: list[tuple[bytes | None, bytes]] = []
    for i, (k, v) in enumerate(good):
        mixed.append((k, v))
        if i % 20 == 0 and i // 20 < len(BAD):
            bk, bv, _ = BAD[i // 20]
            mixed.append((bk, bv))
    # One gateway batch with a bad element in the middle: the rest of it is scored.
    mixed.append(
        (
            b"gw",
            orjson.dumps(
                [
                    {"stream_id": "gw-1", "ts": 1_795_219_200_000, "values": [50, 0.1, 3, 20]},
                    {"stream_id": "gw-1", "ts": "later", "values": [50, 0.1, 3, 20]},
                    {"stream_id": "gw-1", "ts": 1_795_219_260_000, "values": [51, 0.1, 3, 21]},
                ]
            ),
        )
    )
    from kafka import KafkaProducer

    prod = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=4_000_000)
    for k, v in mixed:
        prod.send(topics.readings, key=k, value=v)
    prod.flush()
    prod.close()
    w = WorkerProc(
        bootstrap, topics, tmp / "models", "g-bad", tmp / "w.log", env=ALERT_EVERYTHING
    ).start()
    try:
        wait_caught_up(bootstrap, "g-bad", topics.readings, worker=w)
        m = w.metrics()
        assert w.proc is not None and w.proc.poll() is None  # still up
        assert w.stop(signal.SIGTERM) == 0
    finally:
        if w.proc and w.proc.poll() is None:
            w.stop(signal.SIGKILL)
    dlq = drain(bootstrap, topics.dlq)
    reasons = [dict(r.headers)["reason"].decode() for r in dlq]
    expected = [r for _, _, r in BAD] + ["bad_ts"]
    assert sorted(reasons) == sorted(expected)
    assert len(BAD) >= 15 and {r for _, _, r in BAD} == set(REASONS)
    for r in dlq:
        h = dict(r.headers)
        assert h["source_topic"].decode() == topics.readings
        assert int(h["source_offset"]) >= 0 and int(h["source_partition"]) >= 0
        assert h["detail"]
    gw = [r for r in dlq if r.key == b"gw"]
    assert len(gw) == 1 and dict(gw[0].headers)["index"] == b"1"
    for reason in set(expected):
        assert m[f"anomalyd_bad_readings_total{{reason={reason}}}"] == expected.count(reason)
    assert m["anomalyd_readings_total"] == n_good + 2
    alerts = alerts_of(drain(bootstrap, topics.alerts))
    assert len({a["alert_id"] for a in alerts}) == n_good + 2
