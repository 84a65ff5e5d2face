"""Fault tests with a trained model, every rule on and incidents: what an operator runs.

test_reliability.py counts readings with an untrained model that alerts on every reading;
here the model is trained and calibrated as ``anomalyd train`` does, with the flatline,
sustained, new-range and peak rules and incidents on, and the readings carry the
simulator's injected anomalies, so incidents open and resolve. Rule and incident state
then live in the checkpoints too, and a restore that lost or doubled any of it would open,
resolve or describe an incident differently.

The reference is the engine itself, uninterrupted (no broker, no worker), fed the same
records in their partitions' order: its incident events, alert ids included, must equal
the fault run's (at least once: de-duplicated by alert id), every score within 1e-4 (the
alerts' 4 decimals) and every rule name, incident id and count exact. Each test prints a
one-line summary (``-s`` shows it); docs/reliability.md quotes them.
"""

from __future__ import annotations

import math
import random
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from detector.artifacts import load_current, publish
from detector.core.engine import Engine
from detector.core.events import batch_events
from detector.core.incidents import IncidentConfig, rule_names
from detector.core.rules import FlatlineConfig, PeakConfig, RangeConfig
from detector.core.schema import FeatureSpec, decode_batch
from detector.sandbox.messages import to_json_messages
from detector.sandbox.simulation import Fleet, FleetSpec
from tests.integration.harness import (
    Topics,
    WorkerProc,
    alerts_of,
    committed,
    drain,
    end_offsets,
    stop_all,
    wait_caught_up,
    wait_progress,
)
from tests.integration.harness import (
    publish as publish_messages,
)
from training import cli as train_cli

pytestmark = pytest.mark.integration

STREAMS, TICKS, PER_MESSAGE = 40, 500, 5  # 20,000 readings in 4,000 gateway messages
# A checkpoint every second at most and small polls (500 readings): many batches between
# two checkpoints, so every kill replays something. Scoring is the model's own.
ENV = {
    "ANOMALYD_STATE__INTERVAL_S": "1",
    "ANOMALYD_CONSUMER__MAX_POLL_RECORDS": "100",
    "ANOMALYD_CONSUMER__SESSION_TIMEOUT_MS": "6000",
    "ANOMALYD_ENGINE__THREADS": "1",
}
MAX_GAP_MS = 3_600_000  # the worker's default engine.max_gap_s
SCORE_TOL = 1e-4 + 1e-9  # scores are rounded to 4 decimals in the alert
_RESTORED = re.compile(r"restored (\d+) streams")


@dataclass
class Trained:
    """One readings topic, one trained model and the engine's uninterrupted events."""

    bootstrap: str
    readings: str
    models: Path
    logs: Path
    n_readings: int
    n_messages: int
    reference: dict[str, dict[str, Any]]  # alert id -> event
    rules: Counter[str]  # readings flagged by each rule, uninterrupted

    def worker(self, name: str, log: str, env: dict[str, str] | None = None) -> WorkerProc:
        topics = Topics(self.readings, f"{name}.alerts", f"{name}.dlq", f"{name}.state")
        return WorkerProc(
            self.bootstrap, topics, self.models, name, self.logs / log, env=ENV | (env or {})
        )


def _train(model_dir: Path, work: Path) -> dict[str, Any]:
    """Train on a clean simulated fleet as ``anomalyd train`` does, every rule on; publish."""
    argv = ["train", "--source", "simulate", "--sim-streams", "8", "--sim-ticks", "500"]
    argv += ["--epochs", "2", "--hidden", "16", "--layers", "1", "--seed", "0"]
    argv += ["--threads", "1", "--device", "cpu", "--budget", "0", "--out", str(work)]
    assert train_cli.main(argv) == 0
    b = load_current(work)
    s, f = b.scoring, len(b.features)
    # The short fit leaves some rules uncalibrated (0: off); set what is missing.
    s = replace(
        s,
        flatline=s.flatline or FlatlineConfig((5,) * f),
        peak=s.peak if s.peak is not None and s.peak.ready() else PeakConfig(s.threshold + 1.5),
        new_range=s.new_range or RangeConfig(margin=0.5, after=100, cooldown=100),
        incidents=s.incidents or IncidentConfig(),
    )
    assert s.sustains(f), f"the sustained rule is not calibrated: {s.sustained}"
    manifest = orjson.loads(
        (publish(model_dir, replace(b, scoring=s)) / "manifest.json").read_bytes()
    )
    scoring = manifest["scoring"]
    for rule in ("flatline", "sustained", "new_range", "peak", "incidents"):
        assert scoring[rule] is not None, f"{rule} is off in the published manifest"
    return dict(scoring)


def _reference(
    bootstrap: str, topic: str, model_dir: Path
) -> tuple[dict[str, dict[str, Any]], Counter[str], int]:
    """The engine, uninterrupted, over ``topic``'s records: events by alert id, rule counts."""
    bundle = load_current(model_dir)
    engine = Engine(bundle, max_streams=10_000, device="cpu", max_gap_ms=MAX_GAP_MS)
    records, spec = drain(bootstrap, topic), FeatureSpec(bundle.features)
    events: dict[str, dict[str, Any]] = {}
    rules: Counter[str] = Counter()
    n = 0
    for i in range(0, len(records), 100):
        batch = decode_batch(records[i : i + 100], spec)
        assert not batch.refused
        vals = batch.values.astype(np.float32)
        res = engine.process(batch.stream_ids, batch.ts, vals, now_ms=int(batch.ts.max()))
        n += len(batch)
        for m in res.rules.tolist():
            rules.update(rule_names(int(m)))
        for _, doc in batch_events(batch, res, bundle, 0):
            events[doc["alert_id"]] = doc
    return events, rules, n


@pytest.fixture(scope="module")
def trained(
    kafka_bootstrap: str, create_topic: Callable[..., str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Trained]:
    t0 = time.monotonic()
    tmp = tmp_path_factory.mktemp("faults-trained")
    scoring = _train(tmp / "models", tmp / "train")
    t_train = time.monotonic() - t0
    readings = create_topic(kafka_bootstrap, f"trained-{uuid.uuid4().hex[:8]}.readings", 4)
    fleet = Fleet(FleetSpec(streams=STREAMS, seed=23, anomaly_rate=4.0))
    msgs = [m for block in fleet.blocks(TICKS) for m in to_json_messages(block, PER_MESSAGE)]
    publish_messages(kafka_bootstrap, readings, msgs)
    events, rules, n = _reference(kafka_bootstrap, readings, tmp / "models")
    kinds = Counter(e["event"] for e in events.values())
    assert n == STREAMS * TICKS and kinds["open"] > 0 and kinds["resolved"] > 0
    print(
        f"\ntrained fixture: model trained in {t_train:.1f}s (threshold "
        f"{scoring['threshold']:.2f}, peak {scoring['peak']['threshold']:.2f}); reference: "
        f"{n} readings, {len(fleet.anomalies)} injected anomalies, {kinds['open']} opened and "
        f"{kinds['resolved']} resolved incidents, readings flagged by rule {dict(rules)}, "
        f"{time.monotonic() - t0:.0f}s"
    )
    yield Trained(
        kafka_bootstrap, readings, tmp / "models", tmp / "logs", n, len(msgs), events, rules
    )


def _same(a: Any, b: Any, key: str = "") -> bool:
    """Equal documents; floats to the alerts' precision, ``score`` within SCORE_TOL."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(k == "detected_at" or _same(a[k], b[k], k) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, key) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        if key == "score":
            return bool(abs(a - b) <= SCORE_TOL)
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-3)
    return bool(a == b)


def _check_against_reference(tr: Trained, name: str) -> tuple[int, float]:
    """The fault run's events equal the reference's; returns (duplicates, worst score diff)."""
    got = alerts_of(drain(tr.bootstrap, f"{name}.alerts"))
    by: dict[str, dict[str, Any]] = {}
    dup = 0
    for doc in got:
        if doc["alert_id"] in by:
            dup += 1
            assert _same(doc, by[doc["alert_id"]]), f"a redelivery differs: {doc}"
        by[doc["alert_id"]] = doc
    worst, differ = 0.0, []
    for aid in tr.reference.keys() & by.keys():
        ref = tr.reference[aid]
        if not _same(by[aid], ref):
            differ.append(aid)
        if ref["event"] == "open":
            worst = max(worst, abs(by[aid]["score"] - ref["score"]))
    missing, extra = tr.reference.keys() - by.keys(), by.keys() - tr.reference.keys()
    assert not missing and not extra and not differ, (
        f"{len(missing)} events missing, e.g. {[tr.reference[k] for k in sorted(missing)[:2]]}; "
        f"{len(extra)} extra, e.g. {[by[k] for k in sorted(extra)[:2]]}; {len(differ)} of "
        f"the others differ, e.g. {[(by[k], tr.reference[k]) for k in differ[:1]]}; worst "
        f"score difference of the open events in both {worst:.1e}"
    )
    return dup, worst


def _restored(w: WorkerProc) -> int:
    """Streams the worker's log says it restored from checkpoints."""
    return sum(int(m) for m in _RESTORED.findall(w.log.read_text(errors="replace")))


def test_uninterrupted_worker_equals_the_engine(trained: Trained) -> None:
    """The control: without faults the worker's events are the reference's."""
    tr, name, t0 = trained, f"tctl-{uuid.uuid4().hex[:6]}", time.monotonic()
    w = tr.worker(name, "control.log").start()
    try:
        wait_caught_up(tr.bootstrap, name, tr.readings, timeout_s=240, worker=w)
        m = w.metrics()
        assert w.stop(signal.SIGTERM) == 0
    finally:
        stop_all(w)
    assert m["anomalyd_readings_total"] == tr.n_readings
    dup, worst = _check_against_reference(tr, name)
    assert dup == 0
    print(
        f"\ntrained control: {tr.n_readings} readings, {len(tr.reference)} incident events "
        f"as the reference, worst score diff {worst:.1e}, {time.monotonic() - t0:.0f}s"
    )


@pytest.mark.xfail(
    strict=False,
    reason="a float32 tie (issue 15): at the reading where one stream's incident may resolve, "
    "a feature's sustained average is 0.9999999 of its limit; after a restore the readings "
    "are stepped in other batches and a last-bit difference flips it (4 of 6 runs); the "
    "comparison must allow decisions within float error of a limit; docs/reliability.md",
)
def test_sigkill_five_times_restores_rules_and_incidents_exactly(trained: Trained) -> None:
    tr, name, rng = trained, f"tkill-{uuid.uuid4().hex[:6]}", random.Random(5)
    t0 = time.monotonic()
    progress: list[int] = []
    restored: list[int] = []
    w = tr.worker(name, "kill-0.log").start()
    try:
        for i in range(5):
            wait_progress(w, rng.randint(1000, 3000))
            time.sleep(rng.uniform(0.0, 0.5))
            w.send_signal(signal.SIGKILL)
            assert w.proc is not None and w.proc.wait(30) == -signal.SIGKILL
            progress.append(sum(committed(tr.bootstrap, name, tr.readings).values()))
            w = tr.worker(name, f"kill-{i + 1}.log").start()
            w.wait_ready()
            restored.append(_restored(w))
        assert progress[-1] < tr.n_messages, "the kills must come mid-stream"
        wait_caught_up(tr.bootstrap, name, tr.readings, timeout_s=240, worker=w)
        m = w.metrics()
        assert w.stop(signal.SIGTERM) == 0
    finally:
        stop_all(w)
    # Each restart restored state from a checkpoint, and the last one scored only the rest.
    assert all(r > 0 for r in restored), f"streams restored at each restart: {restored}"
    assert m["anomalyd_checkpoint_restore_seconds_count"] >= 1
    assert m["anomalyd_readings_total"] < tr.n_readings
    ends = end_offsets(tr.bootstrap, tr.readings)
    assert committed(tr.bootstrap, name, tr.readings) == ends  # every reading consumed
    print(  # before the comparison, so a failing run shows that the faults happened
        f"\ntrained sigkill x5: {tr.n_readings} readings in {tr.n_messages} messages, "
        f"committed messages at each kill {progress}, streams restored at each restart "
        f"{restored}, the last worker scored {m['anomalyd_readings_total']:.0f}"
    )
    dup, worst = _check_against_reference(tr, name)
    print(
        f"trained sigkill x5: {len(tr.reference)} incident events as the reference, {dup} "
        f"duplicates, worst score diff {worst:.1e}, {time.monotonic() - t0:.0f}s"
    )


def test_group_one_three_one_each_worker_scores_and_commits(trained: Trained) -> None:
    tr, name, t0 = trained, f"tgroup-{uuid.uuid4().hex[:6]}", time.monotonic()
    # Small polls stretch the run over the moves: each joiner must find readings left.
    slow = {"ANOMALYD_CONSUMER__MAX_POLL_RECORDS": "2"}
    w1 = tr.worker(name, "group-1.log", slow).start()
    w2, w3 = tr.worker(name, "group-2.log", slow), tr.worker(name, "group-3.log", slow)
    done: dict[str, tuple[float, float]] = {}  # worker -> (readings, commits)
    try:
        # One consumer drains a fetched partition before the next: the joiners come as soon
        # as the first worker scored, or their partitions may be done before they join.
        wait_progress(w1, 1)
        w2.start()
        w3.start()
        for w in (w2, w3):
            w.wait_ready(timeout_s=120)  # each holds partitions
        for w in (w2, w3):
            wait_progress(w, 1, timeout_s=60)  # each scored readings of its own
        grown = sum(committed(tr.bootstrap, name, tr.readings).values())
        for label, w in (("2", w2), ("3", w3)):
            m = w.metrics()
            done[label] = (m["anomalyd_readings_total"], m["anomalyd_commits_total"])
            assert w.stop(signal.SIGTERM) == 0, w.tail()
        shrunk = sum(committed(tr.bootstrap, name, tr.readings).values())
        wait_caught_up(tr.bootstrap, name, tr.readings, timeout_s=240, worker=w1)
        m = w1.metrics()
        done["1"] = (m["anomalyd_readings_total"], m["anomalyd_commits_total"])
        assert w1.stop(signal.SIGTERM) == 0
    finally:
        stop_all(w1, w2, w3)
    assert shrunk < tr.n_messages, "the group must shrink mid-stream"
    assert all(r > 0 and c > 0 for r, c in done.values()), done
    assert m["anomalyd_rebalances_total{event=assigned}"] >= 3
    assert committed(tr.bootstrap, name, tr.readings) == end_offsets(tr.bootstrap, tr.readings)
    dup, worst = _check_against_reference(tr, name)
    print(
        f"\ntrained group 1->3->1: committed {grown}/{tr.n_messages} messages at three "
        f"workers, {shrunk} back at one; readings, commits per worker "
        f"{ {k: (int(r), int(c)) for k, (r, c) in sorted(done.items())} }; "
        f"{len(tr.reference)} incident events as the reference, {dup} duplicates, worst "
        f"score diff {worst:.1e}, {time.monotonic() - t0:.0f}s"
    )
