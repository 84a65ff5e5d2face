"""`bench/decode.py` keeps running: its JSON has every layout's rate, measured in one run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_decode_benchmark_reports_every_layout() -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "decode.py"), "--streams", "200"]
    cmd += ["--ticks", "20", "--repeat", "1", "--json"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["readings"] == 4000
    for key in ("rows_batch100", "rows_batch100_reading_by_reading", "columnar_batch100"):
        assert out[key] > 0, out
    assert (
        out["rows_one_pass_gain"] == out["rows_batch100"] / out["rows_batch100_reading_by_reading"]
    )
