"""Fault tests with a trained model, every rule on and incidents: what an operator runs.

test_reliability.py counts readings with an untrained model that alerts on every reading;
here the model is trained and calibrated as ``anomalyd train`` does, with the flatline,
sustained, new-range and peak rules and incidents on, and the readings carry the
simulator's injected anomalies, so incidents open and resolve. Rule and incident state
then live in the checkpoints too, and a restore that lost or doubled any of it would open,
resolve or describe an incident differently.

The reference is the engine itself, uninterrupted, fed the same records in their
partitions' order (``trained.py``): the fault run's incident events, alert ids included,
must equal it (at least once: de-duplicated by alert id), every score within 1e-4 (the
alerts' 4 decimals) and every rule name, incident id and count exact — except for a few
incidents decided on a float32 tie, which must then come out as the engine decided them in
another batch composition. Each test prints a one-line summary (``-s`` shows it);
docs/reliability.md quotes them. test_faults_trained_more.py has the broker restart and
the stream flood.
"""

from __future__ import annotations

import random
import signal
import time
import uuid

import pytest

from tests.integration.harness import (
    WorkerProc,
    committed,
    end_offsets,
    stop_all,
    wait_caught_up,
    wait_progress,
)
from tests.integration.trained import Trained, check, restored

pytestmark = pytest.mark.integration
# The ``trained`` fixture (session scope): one model and reference for both files.
pytest_plugins = ["tests.integration.trained"]


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
    c = check(tr, name)
    assert c.duplicates == 0
    print(
        f"\ntrained control: {tr.n_readings} readings, {c.summary(tr.ref)}, "
        f"{time.monotonic() - t0:.0f}s"
    )


def test_sigkill_five_times_restores_rules_and_incidents_exactly(trained: Trained) -> None:
    tr, name, rng = trained, f"tkill-{uuid.uuid4().hex[:6]}", random.Random(5)
    t0 = time.monotonic()
    progress: list[int] = []
    streams: list[int] = []  # restored at each restart
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
            streams.append(restored(w))
        assert progress[-1] < tr.n_messages, "the kills must come mid-stream"
        wait_caught_up(tr.bootstrap, name, tr.readings, timeout_s=240, worker=w)
        m = w.metrics()
        assert w.stop(signal.SIGTERM) == 0
    finally:
        stop_all(w)
    # Each restart restored state from a checkpoint, and the last one scored only the rest.
    assert all(r > 0 for r in streams), f"streams restored at each restart: {streams}"
    assert m["anomalyd_checkpoint_restore_seconds_count"] >= 1
    assert m["anomalyd_readings_total"] < tr.n_readings
    ends = end_offsets(tr.bootstrap, tr.readings)
    assert committed(tr.bootstrap, name, tr.readings) == ends  # every reading consumed
    print(  # before the comparison, so a failing run shows that the faults happened
        f"\ntrained sigkill x5: {tr.n_readings} readings in {tr.n_messages} messages, "
        f"committed messages at each kill {progress}, streams restored at each restart "
        f"{streams}, the last worker scored {m['anomalyd_readings_total']:.0f}"
    )
    c = check(tr, name)
    print(f"trained sigkill x5: {c.summary(tr.ref)}, {time.monotonic() - t0:.0f}s")


def _wait_log(w: WorkerProc, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in (w.log.read_text(errors="replace") if w.log.exists() else ""):
        assert time.monotonic() < deadline, f"no {text!r} in {timeout_s}s\n{w.tail()}"
        assert w.proc is not None and w.proc.poll() is None, w.tail()
        time.sleep(0.1)


def test_group_one_three_one_each_worker_scores_and_commits(trained: Trained) -> None:
    tr, name, t0 = trained, f"tgroup-{uuid.uuid4().hex[:6]}", time.monotonic()
    # Small polls stretch the run over the moves: each joiner must find readings left.
    slow = {"ANOMALYD_CONSUMER__MAX_POLL_RECORDS": "2"}
    w1 = tr.worker(name, "group-1.log", slow).start()
    w2, w3 = tr.worker(name, "group-2.log", slow), tr.worker(name, "group-3.log", slow)
    done: dict[str, tuple[float, float]] = {}  # worker -> (readings, commits)
    try:
        # One consumer drains a fetched partition before the next: the joiners must come
        # as soon as the first worker scored, or their partitions may be done before they
        # join and leave them nothing to score (it happened under load). So the first one
        # is paused while they start up (seconds of imports), and goes on as they join.
        wait_progress(w1, 1)
        w1.send_signal(signal.SIGSTOP)
        try:
            w2.start()
            w3.start()
            for w in (w2, w3):
                _wait_log(w, "serving model", timeout_s=120)
        finally:
            w1.send_signal(signal.SIGCONT)
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
    c = check(tr, name)
    print(
        f"\ntrained group 1->3->1: committed {grown}/{tr.n_messages} messages at three "
        f"workers, {shrunk} back at one; readings, commits per worker "
        f"{ {k: (int(r), int(n)) for k, (r, n) in sorted(done.items())} }; "
        f"{c.summary(tr.ref)}, {time.monotonic() - t0:.0f}s"
    )
