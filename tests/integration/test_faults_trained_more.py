"""More faults with a trained model, every rule on and incidents: a broker restart, a flood.

The same model, readings and reference comparison as test_faults_trained.py (see
``trained.py``), for the faults of test_reliability.py that the untrained model only counted:
the broker restarting under a working worker, and more stream ids than ``max_streams``.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson
import pytest

from detector.sandbox.containerbroker import ContainerBroker
from detector.sandbox.messages import to_json_messages
from detector.sandbox.simulation import Block, Fleet, FleetSpec
from tests.integration.eventcompare import Events, compare
from tests.integration.harness import (
    committed,
    drain,
    end_offsets,
    publish,
    stop_all,
    wait_caught_up,
    wait_progress,
)
from tests.integration.trained import (
    PER_MESSAGE,
    STREAMS,
    TICKS,
    Trained,
    check,
    fault_events,
    reference,
)

pytestmark = pytest.mark.integration
# The ``trained`` fixture (session scope): one model and reference for both files.
pytest_plugins = ["tests.integration.trained"]

# What kafka-python logs when the broker it talks to goes away (its connection errors).
_LOST = "KafkaConnectionError"


def test_broker_restart_with_every_rule_on_matches_the_engine(
    trained: Trained, kafka_broker: ContainerBroker
) -> None:
    tr, name, t0 = trained, f"tbroker-{uuid.uuid4().hex[:6]}", time.monotonic()
    # 100 readings a batch: the run lasts long enough for the broker to go mid-stream.
    w = tr.worker(name, "broker.log", {"ANOMALYD_CONSUMER__MAX_POLL_RECORDS": "20"}).start()
    try:
        wait_progress(w, tr.n_readings / 5)
        lines = len(w.log.read_text(errors="replace").splitlines())
        t1 = time.monotonic()
        kafka_broker.restart()
        down = time.monotonic() - t1
        back = w.metrics()  # what it had scored when the broker answered again
        wait_caught_up(tr.bootstrap, name, tr.readings, timeout_s=240, worker=w)
        m = w.metrics()
        assert w.stop(signal.SIGTERM) == 0
    finally:
        stop_all(w)
    # The worker saw the broker go: its Kafka clients logged lost connections, or its
    # calls failed (counted); it survived, and scored the rest after the broker came back.
    after = "\n".join(w.log.read_text(errors="replace").splitlines()[lines:])
    lost = after.count(_LOST)
    errors = sum(v for k, v in m.items() if k.startswith("anomalyd_kafka_errors_total"))
    failed = m["anomalyd_commit_failures_total"]
    assert lost + errors + failed > 0, f"no sign the worker saw the broker go:\n{w.tail()}"
    assert back["anomalyd_readings_total"] < tr.n_readings, "the restart must come mid-stream"
    assert m["anomalyd_readings_total"] >= tr.n_readings  # scored the rest after (no kill)
    assert committed(tr.bootstrap, name, tr.readings) == end_offsets(tr.bootstrap, tr.readings)
    print(  # before the comparison, so a failing run shows that the fault happened
        f"\ntrained broker restart: down {down:.1f}s with {back['anomalyd_readings_total']:.0f}/"
        f"{tr.n_readings} readings scored; {lost} KafkaConnectionError in its log, {errors:.0f} "
        f"failed Kafka calls, {failed:.0f} failed commits; {m['anomalyd_readings_total']:.0f} "
        f"readings scored in all"
    )
    c = check(tr, name)
    print(f"trained broker restart: {c.summary(tr.ref)}, {time.monotonic() - t0:.0f}s")


FLOOD, PER_GATEWAY, CAP = 15_000, 20, 2_000  # flood streams x 2 readings; max_streams


def _flood_topic(tr: Trained, create_topic: Callable[..., str]) -> tuple[str, int]:
    """The fleet's readings with a flood of new stream ids spread among them; readings."""
    # 8 partitions of under 1 MB: a worker fetches each whole and reads it in order.
    topic = create_topic(tr.bootstrap, f"tflood-{uuid.uuid4().hex[:8]}.readings", 8)
    fleet = Fleet(FleetSpec(streams=STREAMS, seed=23, anomaly_rate=4.0))
    msgs = [m for block in fleet.blocks(TICKS) for m in to_json_messages(block, PER_MESSAGE)]
    block = Fleet(FleetSpec(streams=FLOOD, seed=29, anomaly_rate=0.0, prefix="flood-")).step(2)
    rows = [  # a gateway's message: one reading of each of PER_GATEWAY new streams
        (
            f"gw-{g // PER_GATEWAY}".encode(),
            orjson.dumps([_reading(block, t, s) for s in range(g, g + PER_GATEWAY)]),
        )
        for t in range(2)
        for g in range(0, FLOOD, PER_GATEWAY)
    ]
    out = []
    for i, m in enumerate(msgs):  # the flood messages evenly among the fleet's
        out.append(m)
        out += rows[i * len(rows) // len(msgs) : (i + 1) * len(rows) // len(msgs)]
    publish(tr.bootstrap, topic, out)
    return topic, STREAMS * TICKS + 2 * FLOOD


def _reading(b: Block, t: int, s: int) -> dict[str, Any]:
    return {
        "stream_id": b.stream_ids[s],
        "ts": int(b.ts_ms[t, s]),
        "values": dict(zip(b.features, b.values[t, s].tolist(), strict=True)),
    }


def _after_the_end(events: Events, streams: set[str]) -> tuple[Events, int]:
    """``streams``' events less the resolved ones of incidents closed by an eviction, each
    checked to close an incident still open after the stream's last reading; how many."""
    mine = {k: e for k, e in events.items() if e["stream_id"] in streams}
    closed = {k for k, e in mine.items() if e.get("reason") == "evicted"}
    rest = {k: e for k, e in mine.items() if k not in closed}
    recovered = {e["incident_id"] for e in rest.values() if e["event"] == "resolved"}
    assert not {mine[k]["incident_id"] for k in closed} & recovered, "evicted twice"
    return rest, len(closed)


def test_flood_beyond_max_streams_with_every_rule_on(
    trained: Trained, create_topic: Callable[..., str]
) -> None:
    """More stream ids than ``max_streams``: the store stays within it, evicting the least
    recently seen, and the fleet's streams score as the engine's with the same max_streams.

    Which streams are evicted when depends on batch composition: the worker stamps a batch's
    streams with its wall clock and evicts the oldest (ties by slot), and which records share
    a batch, and when, depends on its polls; the engine's clock is the readings' time. What is
    well-defined, and compared: every reading scored, no dead letter, every event
    schema-valid (``fault_events``), the store within ``max_streams`` with at least one
    eviction per stream beyond it, and the fleet's incidents as the engine's. The fleet's
    streams are never evicted while their partition is read: the topic's 8 partitions are
    each fetched whole and read in turn (by the worker, and by the engine here), and one
    partition's flood (~1,900 streams a round) stays under max_streams. Afterwards they are
    evicted, in an order of no meaning: an incident left open by a stream's last reading may
    then be closed (reason evicted) in one run and not the other.
    """
    tr, name, t0 = trained, f"tflood-{uuid.uuid4().hex[:6]}", time.monotonic()
    topic, n = _flood_topic(tr, create_topic)
    records = sorted(drain(tr.bootstrap, topic), key=lambda r: (r.partition, r.offset))
    # The engine with the same max_streams, a partition after the other: ties are told by
    # the fixture's compositions of the same fleet readings (same incident ids).
    ref = reference(records, tr.models, max_streams=CAP, shifts=(), polls=0)
    t_ref = time.monotonic() - t0
    w = tr.worker_on(topic, name, "flood.log", {"ANOMALYD_ENGINE__MAX_STREAMS": str(CAP)})
    w.start()
    peak = 0.0
    try:
        deadline = time.monotonic() + 240
        ends = sum(end_offsets(tr.bootstrap, topic).values())
        while sum(committed(tr.bootstrap, name, topic).values()) < ends:
            assert time.monotonic() < deadline, f"not caught up\n{w.tail()}"
            assert w.proc is not None and w.proc.poll() is None, w.tail()
            if w.get("/readyz")[0] == 200:
                peak = max(peak, w.metrics()["anomalyd_active_streams"])
            time.sleep(0.3)
        m = w.metrics()
        assert w.stop(signal.SIGTERM) == 0
    finally:
        stop_all(w)
    lru = m["anomalyd_evictions_total{reason=lru}"]
    assert m["anomalyd_readings_total"] == n and not drain(tr.bootstrap, f"{name}.dlq")
    assert max(peak, m["anomalyd_active_streams"]) <= CAP
    # Every stream beyond max_streams made room: at least one eviction each.
    assert lru >= FLOOD + STREAMS - CAP
    got, dup, redecided = fault_events(tr.bootstrap, name)
    fleet = {f"pump-{i:05d}" for i in range(STREAMS)}
    mine, closed_ref = _after_the_end(ref.primary, fleet)
    theirs, closed = _after_the_end(got, fleet)
    c = compare(replace(ref, primary=mine), theirs, dup, ties_of=tr.ref, redecided=redecided)
    kinds = Counter(e["event"] for e in theirs.values())
    flood = sum(1 for e in got.values() if e["stream_id"] not in fleet)
    print(
        f"\ntrained flood: {n} readings ({STREAMS} fleet streams, {FLOOD} flood streams x 2) "
        f"through max_streams={CAP}: peak {peak:.0f} resident, {lru:.0f} LRU evictions "
        f"(engine: {len(ref.evicted)} streams evicted); the fleet's {kinds['open']} opened "
        f"and {kinds['resolved']} resolved incidents as the engine's, {c.duplicates} "
        f"duplicates, worst score diff {c.worst:.1e}, {len(c.excused)} tie-sensitive "
        f"incidents excused {c.excused}; open at the end and closed by an eviction: "
        f"{closed} (engine {closed_ref}); {flood} events of flood streams; reference "
        f"{t_ref:.0f}s, {time.monotonic() - t0:.0f}s"
    )
