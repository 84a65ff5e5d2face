"""The calibration's replays side by side in worker processes: the same thresholds as one
after the other, and a worker that dies costs time, not the training run."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import sys
from functools import partial

import pytest

from detector.core.peak import PeakConfig
from detector.core.rules import SustainConfig
from detector.core.scoring import ScoringConfig
from detector.observability.logs import JsonFormatter
from tests.unit.factories import clean_series, make_bundle
from training.budget import Part, fit_budget_pooled
from training.parallel import Jobs


def _pid() -> int:
    return os.getpid()


def _die_in_a_worker(value: int) -> int:
    if multiprocessing.parent_process() is not None:
        os._exit(3)  # as a worker the kernel killed for memory
    return value


def _log_in_a_worker(text: str) -> int:
    logging.getLogger("anomalyd.training").info(text)
    return os.getpid()


def _refuse_in_a_worker(value: int) -> int:
    if multiprocessing.parent_process() is not None:
        raise PermissionError("the worker's own error")
    return value


def test_parts_replayed_in_workers_set_the_thresholds_they_set_in_process() -> None:
    series = clean_series(6, 400, seed=3)
    b = make_bundle(features=2)
    base = ScoringConfig(sustained=SustainConfig(20, (0.3, 0.3), 4.0), peak=PeakConfig())
    parts = [Part(b.module, b.scaler, series[k::2], base) for k in range(2)]
    alone, alone_report = fit_budget_pooled(parts, b.features, budget=2.0, jobs=1)
    side, side_report = fit_budget_pooled(parts, b.features, budget=2.0, jobs=2)
    assert side == alone
    assert side_report == alone_report


def test_calls_run_in_workers_only_when_more_than_one_job_is_asked() -> None:
    with Jobs(1) as jobs:
        assert jobs.map([_pid, _pid]) == [os.getpid()] * 2
    with Jobs(2) as jobs:
        assert os.getpid() not in jobs.map([_pid, _pid])
    with Jobs(2, device="cuda") as jobs:  # one CUDA context: never in workers
        assert jobs.map([_pid, _pid]) == [os.getpid()] * 2


def test_a_worker_that_dies_leaves_the_calls_to_this_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING), Jobs(2) as jobs:
        assert jobs.map([partial(_die_in_a_worker, k) for k in range(3)]) == [0, 1, 2]
        assert jobs.map([_pid, _pid]) == [os.getpid()] * 2  # and stays here
    assert "replaying in this process from now on" in caplog.text


def test_a_calls_own_error_is_raised_not_hidden_by_a_rerun_here() -> None:
    # An OSError of the call's own is not a pool that could not start.
    with Jobs(2) as jobs, pytest.raises(PermissionError, match="the worker's own error"):
        jobs.map([partial(_refuse_in_a_worker, k) for k in range(2)])


def test_workers_log_at_the_training_process_level_and_format(
    capfd: pytest.CaptureFixture[str],
) -> None:
    root, handler = logging.getLogger(), logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())  # as `anomalyd --log-format json train`
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with Jobs(2) as jobs:
            pids = jobs.map([partial(_log_in_a_worker, "replayed in a worker")] * 2)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert os.getpid() not in pids
    docs = [json.loads(line) for line in capfd.readouterr().err.splitlines() if "replayed" in line]
    assert len(docs) == 2, docs  # INFO, which a worker's default (WARNING) would drop
    assert {d["msg"] for d in docs} == {"replayed in a worker"}
    assert {d["level"] for d in docs} == {"INFO"}


def test_ctrl_c_during_long_replays_ends_them_and_leaves_no_worker() -> None:
    # The workers ignore SIGINT and SIGTERM (the trainer acts on them); leaving on an error
    # used to wait for the running replays at the interpreter's exit, and a killed trainer
    # left them running on their own.
    import signal
    import threading
    import time

    jobs = Jobs(2)
    jobs.map([partial(_pid), partial(_pid)])  # the workers started (importing torch: seconds)
    workers = list(jobs._pool._processes.values())  # type: ignore[union-attr]
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    started = time.monotonic()
    # Ctrl-C as a terminal gives it: a handler an earlier test left in this process (a
    # command's stop handler) must not stand in for it (one CI run slept the minute out).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt), jobs:
            jobs.map([partial(time.sleep, 60), partial(time.sleep, 60)])
    finally:
        signal.signal(signal.SIGINT, before)
    deadline = time.monotonic() + 10  # the pool's own thread reaps them too: poll
    while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert time.monotonic() - started < 30
    assert not any(w.is_alive() for w in workers)
