"""The prefetch plugin's work runs at idle priority, where the other tests cannot feel it."""

from __future__ import annotations

import os
from pathlib import Path

from tests.prefetch import background


def _probe(workdir: Path) -> tuple[int, int, bool]:
    return os.getpriority(os.PRIO_PROCESS, 0), os.getsid(0), workdir.is_dir()


PROBE = background(__name__, "probe", _probe)


def test_background_work_runs_at_idle_priority_in_a_session_of_its_own(tmp_path: Path) -> None:
    nice, session, has_workdir = PROBE.result(tmp_path)
    # Its own session: with autogroups on, a nice value only ranks processes within one.
    assert nice == 19 and session != os.getsid(0) and has_workdir
