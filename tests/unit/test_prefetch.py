"""The prefetch plugin's work runs at idle priority, where the other tests cannot feel it."""

from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from tests.prefetch import Background, background


def _probe(workdir: Path) -> tuple[int, int, bool]:
    return os.getpriority(os.PRIO_PROCESS, 0), os.getsid(0), workdir.is_dir()


PROBE = background(__name__, "probe", _probe)


def test_background_work_runs_at_idle_priority_in_a_session_of_its_own(tmp_path: Path) -> None:
    nice, session, has_workdir = PROBE.result(tmp_path)
    # Its own session: with autogroups on, a nice value only ranks processes within one.
    assert nice == 19 and session != os.getsid(0) and has_workdir


def _dies_in_a_worker(parent: int, workdir: Path) -> str:
    if os.getpid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does
    return f"computed in {workdir.name}"


def test_a_worker_that_dies_costs_time_not_the_tests(tmp_path: Path) -> None:
    job = Background(__name__, "dies", partial(_dies_in_a_worker, os.getpid()))
    with ProcessPoolExecutor(1, multiprocessing.get_context("spawn")) as pool:
        (tmp_path / "pool").mkdir()
        job._start(pool, tmp_path / "pool")
        # The broken pool's job runs in-process instead, in the fixture's directory.
        assert job.result(tmp_path) == f"computed in {tmp_path.name}"
