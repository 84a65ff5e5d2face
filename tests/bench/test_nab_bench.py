"""`bench/nab.py` keeps running: it is `anomalyd evaluate nab --json` as a script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_nab_benchmark_script_starts() -> None:
    # Its import of the CLI's registration broke once, unnoticed: the full corpus is a
    # 10-minute run no test makes (tests/unit/nab covers the scoring on small files).
    cmd = [sys.executable, str(ROOT / "bench" / "nab.py"), "--help"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--data" in done.stdout and "--files" in done.stdout
