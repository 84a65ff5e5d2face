"""Exactly once against a real broker: SIGKILL the worker mid-batch, and a ``read_committed``
consumer of the alerts topic still sees each expected alert exactly once, and no other.

As in test_reliability.py every reading alerts (threshold -1e9, no warm-up), so the
expected alert ids follow from the published readings alone: ``alert_id`` hashes the
stream id and the reading's source position. The bad messages mixed in must each reach
the dead-letter topic exactly once too. A ``read_uncommitted`` reader of the same topic
shows what the kills left behind: the aborted transactions' alerts, which a
``read_committed`` reader never sees.
"""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from detector.core.alerts import Origin, alert_id
from tests.integration.harness import (
    Topics,
    WorkerProc,
    committed,
    publish,
    wait_caught_up,
)
from tests.integration.test_worker import ALERT_EVERYTHING, _fleet_messages, _model

pytestmark = pytest.mark.integration

EXACTLY_ONCE = ALERT_EVERYTHING | {
    "ANOMALYD_DELIVERY": "exactly_once",
    "ANOMALYD_CONSUMER__MAX_POLL_RECORDS": "200",  # many transactions: kills land in one
    "ANOMALYD_CONSUMER__SESSION_TIMEOUT_MS": "6000",  # a dead member's partitions move soon
}


def _read(bootstrap: str, topic: str, isolation: str, timeout_s: float = 60) -> list[Any]:
    """Every record of ``topic`` a reader with ``isolation`` sees, from the beginning."""
    c = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation
    )
    tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    ends = c.end_offsets(tps)  # read_committed: the last stable offset
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while any(c.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, f"could not read {topic} to {ends}"
            for recs in c.poll(timeout_ms=500).values():
                out.extend(recs)
        return out
    finally:
        c.close()


def _expected_ids(bootstrap: str, topic: str) -> tuple[set[str], set[tuple[int, int]]]:
    """The alert id of every good reading, and the position of every bad message."""
    ids: set[str] = set()
    bad: set[tuple[int, int]] = set()
    for r in _read(bootstrap, topic, "read_uncommitted"):
        try:
            doc = orjson.loads(r.value)
        except orjson.JSONDecodeError:
            bad.add((r.partition, r.offset))
            continue
        docs = enumerate(doc) if isinstance(doc, list) else [(-1, doc)]
        for i, d in docs:
            ids.add(alert_id(d["stream_id"], Origin(topic, r.partition, r.offset, i)))
    return ids, bad


def _wait_progress(w: WorkerProc, at_least: float, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert w.proc is not None and w.proc.poll() is None, w.tail()
        if w.get("/readyz")[0] == 200 and w.metrics().get("anomalyd_readings_total", 0) >= at_least:
            return
        time.sleep(0.05)
    raise AssertionError(f"no progress to {at_least} readings in {timeout_s}s\n{w.tail()}")


def _eos_input(
    bootstrap: str, create_topic: Callable[..., str], tmp: Path, name: str, rng: random.Random
) -> tuple[Topics, int, set[str], set[tuple[int, int]]]:
    """Readings (single and gateway, 60 bad messages mixed in, shuffled by ``rng``) published
    to a new topic: its topics, the message count, the expected alert ids and the bad
    messages' places."""
    topics = Topics.named(name)
    create_topic(bootstrap, topics.readings, 4)
    _model(tmp / "models")
    single, _ = _fleet_messages(streams=12, ticks=150, batch=1, seed=21)
    gateway, _ = _fleet_messages(streams=12, ticks=150, batch=4, seed=22, prefix="fan-")
    bad = [(b"junk", b"{not json")] * 60
    msgs = single + gateway + bad
    rng.shuffle(msgs)
    publish(bootstrap, topics.readings, msgs)
    expected, bad_at = _expected_ids(bootstrap, topics.readings)
    assert len(expected) == 12 * 150 * 2 and len(bad_at) == 60
    return topics, len(msgs), expected, bad_at


def _assert_each_once(
    bootstrap: str, topics: Topics, expected: set[str], bad_at: set[tuple[int, int]]
) -> int:
    """A read_committed reader sees each expected alert and dead letter once, and no other;
    returns how many alerts only a read_uncommitted reader sees (aborted transactions)."""
    seen = Counter(
        orjson.loads(r.value)["alert_id"] for r in _read(bootstrap, topics.alerts, "read_committed")
    )
    twice = [a for a, n in seen.items() if n > 1]
    assert not twice, f"{len(twice)} alerts committed more than once"
    assert set(seen) == expected, (
        f"{len(expected - set(seen))} alerts missing, {len(set(seen) - expected)} unexpected"
    )
    dead = Counter(
        (int(dict(r.headers)["source_partition"]), int(dict(r.headers)["source_offset"]))
        for r in _read(bootstrap, topics.dlq, "read_committed")
    )
    assert set(dead) == bad_at and max(dead.values()) == 1
    return len(_read(bootstrap, topics.alerts, "read_uncommitted")) - len(expected)


def test_sigkill_three_times_mid_batch_and_each_alert_is_committed_exactly_once(
    kafka_bootstrap: str, create_topic: Callable[..., str], tmp_path: Path
) -> None:
    name, rng = f"eos-{uuid.uuid4().hex[:8]}", random.Random(7)
    # One generator for the shuffle and then the kills: the schedule the test was tuned to.
    topics, n, expected, bad_at = _eos_input(kafka_bootstrap, create_topic, tmp_path, name, rng)

    def worker(i: int) -> WorkerProc:
        log = tmp_path / f"w{i}.log"
        return WorkerProc(
            kafka_bootstrap, topics, tmp_path / "models", name, log, env=EXACTLY_ONCE
        ).start()

    t0, kills = time.monotonic(), []
    w = worker(0)
    try:
        for i in range(3):
            _wait_progress(w, rng.randint(200, 800))
            time.sleep(rng.uniform(0.0, 0.3))
            w.send_signal(signal.SIGKILL)
            assert w.proc is not None and w.proc.wait(30) == -signal.SIGKILL
            kills.append(sum(committed(kafka_bootstrap, name, topics.readings).values()))
            w = worker(i + 1)  # the same instance: its transactional id fences the dead one
        assert kills[-1] < n, "the kills must come mid-stream"
        wait_caught_up(kafka_bootstrap, name, topics.readings, timeout_s=120, worker=w)
    finally:
        if w.proc is not None and w.proc.poll() is None:
            w.stop(signal.SIGKILL)
    aborted = _assert_each_once(kafka_bootstrap, topics, expected, bad_at)
    print(
        f"\nexactly once: {len(expected)} alerts committed once each over 3 SIGKILLs "
        f"(committed offsets at the kills {kills} of {n}); "
        f"{aborted} alerts of aborted transactions visible only read_uncommitted; "
        f"{time.monotonic() - t0:.0f}s"
    )


def test_a_poll_that_fails_reconnects_and_each_alert_is_still_committed_once(
    kafka_bootstrap: str, create_topic: Callable[..., str], tmp_path: Path
) -> None:
    # The producer is transactional: connecting anew fences the old one, as a restart does.
    name, t0 = f"eos-poll-{uuid.uuid4().hex[:8]}", time.monotonic()
    topics, n, expected, bad_at = _eos_input(
        kafka_bootstrap, create_topic, tmp_path, name, random.Random(7)
    )
    env = EXACTLY_ONCE | {"ANOMALYD_TEST_FAIL_POLLS": f"{n // 3}:2"}
    w = WorkerProc(kafka_bootstrap, topics, tmp_path / "models", name, tmp_path / "w.log", env=env)
    w.module = "tests.integration.failing_poll"
    w.start()
    try:
        wait_caught_up(kafka_bootstrap, name, topics.readings, timeout_s=120, worker=w)
        polls = w.metrics()["anomalyd_kafka_errors_total{op=poll}"]
        assert w.stop(signal.SIGTERM) == 0
    finally:
        if w.proc is not None and w.proc.poll() is None:
            w.stop(signal.SIGKILL)
    assert polls == 2, w.tail()
    aborted = _assert_each_once(kafka_bootstrap, topics, expected, bad_at)
    print(
        f"\nexactly once, 2 failed polls after {n // 3} messages: {len(expected)} alerts "
        f"committed once each; {aborted} aborted; {time.monotonic() - t0:.0f}s"
    )
