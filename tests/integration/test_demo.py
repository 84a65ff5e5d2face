"""`anomalyd demo` stopped by Ctrl-C, as from a terminal: the summary comes, nothing crashes.

A terminal's Ctrl-C sends SIGINT to the whole foreground process group. The demo runs the
detector and the broker in sessions of their own and stops them itself, so the detector
still commits, flushes its last events and the summary line counts them.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

_SUMMARY = re.compile(
    r"injected (\d+) anomalies, caught (\d+); (\d+) incidents opened \((\d+) matched no "
    r"injected anomaly\), (\d+) resolved; detector exit code 0"
)
_METRICS = re.compile(r"-- metrics: (\d+) readings")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(560)
def test_ctrl_c_stops_the_demo_in_order_with_its_summary(tmp_path: Path) -> None:
    out = tmp_path / "demo.out"
    argv = [sys.executable, "-m", "detector", "demo", "--workdir", str(tmp_path / "demo")]
    argv += ["--streams", "20", "--history-ticks", "300", "--http-port", str(_free_port())]
    with out.open("wb") as sink:
        demo = subprocess.Popen(
            argv, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ
        )
        try:
            # Broker, training (cross-fitted calibration) and the first scored reading:
            # ~3 minutes on an idle 2-core machine, past 5 on a loaded one.
            deadline = time.monotonic() + 420
            while time.monotonic() < deadline and demo.poll() is None:
                m = _METRICS.findall(out.read_text(errors="replace"))
                if m and int(m[-1]) > 0:  # the detector scores the live fleet
                    break
                time.sleep(1)
            else:
                pytest.fail(f"the demo never scored a reading:\n{out.read_text()[-3000:]}")
            os.killpg(demo.pid, signal.SIGINT)  # the terminal's Ctrl-C: the whole group
            code = demo.wait(timeout=90)
        finally:
            if demo.poll() is None:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait()
    text = out.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    summary = _SUMMARY.search(text)
    assert summary, f"no summary line after Ctrl-C:\n{text[-3000:]}"
    print(f"\ndemo after Ctrl-C: {summary.group(0)}")
