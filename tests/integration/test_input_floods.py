"""Fault tests on the input: a flood of distinct streams through a small ``max_streams``, and
a storm of bad messages among good ones, each with a SIGKILL in the middle — nothing lost,
every bad message dead-lettered (the accounting of test_reliability.py)."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.integration.harness import (
    Topics,
    WorkerProc,
    committed,
    drain,
    end_offsets,
    publish,
    stop_all,
    wait_caught_up,
    wait_progress,
)
from tests.integration.test_reliability import CHAOS, Source, _published, _scores
from tests.integration.test_worker import BAD, _fleet_messages, _model

pytestmark = pytest.mark.integration


def _flood(streams: int, per_stream: int, per_message: int) -> list[tuple[bytes | None, bytes]]:
    """Gateway batches of distinct streams: every stream's k-th reading in round k."""
    base = 1_795_219_200_000
    out: list[tuple[bytes | None, bytes]] = []
    for k in range(per_stream):
        for g in range(0, streams, per_message):
            out.append(
                (
                    f"gw-{g // per_message}".encode(),
                    orjson.dumps(
                        [
                            {
                                "stream_id": f"flood-{s}",
                                "ts": base + k * 60_000,
                                "values": [50 + s % 7, 0.1, 3.0, 20 + k],
                            }
                            for s in range(g, min(g + per_message, streams))
                        ]
                    ),
                )
            )
    return out


def test_flood_of_distinct_streams_stays_within_max_streams_and_loses_nothing(
    kafka_bootstrap: str, make_topic: Callable[..., str], topic_prefix: str, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    topics = Topics.named(topic_prefix)
    make_topic("readings", partitions=4)
    tmp = tmp_path
    _model(tmp / "models")
    cap, streams = 500, 20_000
    publish(kafka_bootstrap, topics.readings, _flood(streams, 2, 20))
    sources = _published(kafka_bootstrap, topics.readings)
    env = CHAOS | {
        "ANOMALYD_ENGINE__MAX_STREAMS": str(cap),
        "ANOMALYD_CONSUMER__MAX_POLL_RECORDS": "100",
    }
    w = WorkerProc(
        kafka_bootstrap, topics, tmp / "models", topic_prefix, tmp / "f1.log", env=env
    ).start()
    peak = 0.0
    try:
        wait_progress(w, len(sources) / 3, timeout_s=120)
        peak = w.metrics()["anomalyd_active_streams"]
        w.stop(signal.SIGKILL)
        w = WorkerProc(
            kafka_bootstrap, topics, tmp / "models", topic_prefix, tmp / "f2.log", env=env
        ).start()
        w.wait_ready()
        after_restore = w.metrics()["anomalyd_active_streams"]
        deadline = time.monotonic() + 240
        while sum(committed(kafka_bootstrap, topic_prefix, topics.readings).values()) < sum(
            end_offsets(kafka_bootstrap, topics.readings).values()
        ):
            assert time.monotonic() < deadline and w.proc is not None and w.proc.poll() is None
            peak = max(peak, w.metrics()["anomalyd_active_streams"])
            time.sleep(0.5)
        m = w.metrics()
        assert w.stop(signal.SIGTERM) == 0
    finally:
        stop_all(w)
    assert max(peak, after_restore, m["anomalyd_active_streams"]) <= cap
    lru = m["anomalyd_evictions_total{reason=lru}"]
    # Nearly every reading is of a stream not resident: each one evicts another.
    assert lru >= m["anomalyd_readings_total"] - 2 * cap
    by = _scores(drain(kafka_bootstrap, topics.alerts))
    assert set(by) == sources and all(len({a for a, _ in v}) == 1 for v in by.values())
    state = drain(kafka_bootstrap, topics.state)
    tombstones = sum(1 for r in state if r.value is None)
    assert tombstones >= streams - cap  # compaction can drop every evicted stream
    print(
        f"\nflood: {streams} streams x 2 readings through max_streams={cap}: peak "
        f"{peak:.0f} resident ({after_restore:.0f} after the restore), {lru:.0f} LRU "
        f"evictions after the restart, {tombstones} tombstones, "
        f"{time.monotonic() - t0:.0f}s"
    )


def test_storm_of_bad_input_is_all_dead_lettered_and_good_input_all_scored(
    kafka_bootstrap: str, make_topic: Callable[..., str], topic_prefix: str, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    topics = Topics.named(topic_prefix)
    make_topic("readings", partitions=4)
    _model(tmp_path / "models")
    good, _ = _fleet_messages(streams=20, ticks=100, batch=1, seed=21)
    light = [(k, v, r) for k, v, r in BAD if len(v) < 100_000]  # no 1 MB / 10k-batch ones
    rng = random.Random(7)
    msgs: list[tuple[bytes | None, bytes]] = []
    n_bad = 0
    for k, v in good:
        msgs.append((k, v))
        for _ in range(2):  # two bad messages per good one, of every light kind
            bk, bv, _ = light[n_bad % len(light)]
            msgs.append((bk if bk is None else f"bad-{rng.randrange(50)}".encode(), bv))
            n_bad += 1
        if rng.random() < 0.1:
            msgs.append((b"junk", rng.randbytes(rng.randrange(1, 200))))
            n_bad += 1
    publish(kafka_bootstrap, topics.readings, msgs)
    env = CHAOS | {"ANOMALYD_CONSUMER__MAX_POLL_RECORDS": "300"}
    w = WorkerProc(
        kafka_bootstrap, topics, tmp_path / "models", topic_prefix, tmp_path / "s1.log", env=env
    ).start()
    try:
        wait_progress(w, len(good) / 3, timeout_s=120)
        w.stop(signal.SIGKILL)
        w = WorkerProc(
            kafka_bootstrap, topics, tmp_path / "models", topic_prefix, tmp_path / "s2.log", env=env
        ).start()
        wait_caught_up(kafka_bootstrap, topic_prefix, topics.readings, timeout_s=240, worker=w)
        assert w.stop(signal.SIGTERM) == 0
    finally:
        stop_all(w)
    all_msgs = drain(kafka_bootstrap, topics.readings)
    good_src: set[Source] = set()
    bad_src: set[tuple[int, int]] = set()
    for r in all_msgs:
        try:
            doc = orjson.loads(r.value)
            ok = isinstance(doc, dict) and r.key is not None and r.key.startswith(b"pump-")
        except orjson.JSONDecodeError:
            ok = False
        if ok:
            good_src.add((r.partition, r.offset, -1))
        else:
            bad_src.add((r.partition, r.offset))
    assert len(good_src) == len(good) and len(bad_src) == n_bad
    by = _scores(drain(kafka_bootstrap, topics.alerts))
    assert set(by) == good_src and all(len({a for a, _ in v}) == 1 for v in by.values())
    dlq = drain(kafka_bootstrap, topics.dlq)
    dead = {
        (int(dict(r.headers)["source_partition"]), int(dict(r.headers)["source_offset"]))
        for r in dlq
    }
    assert dead == bad_src, f"{len(bad_src - dead)} bad messages not dead-lettered"
    print(
        f"\nbad-input storm: {n_bad} bad messages among {len(good)} good readings, one "
        f"SIGKILL: {len(dlq)} dead letters ({len(dlq) - n_bad} redelivered), "
        f"{sum(len(v) for v in by.values()) - len(good)} duplicate alerts, "
        f"{time.monotonic() - t0:.0f}s"
    )
