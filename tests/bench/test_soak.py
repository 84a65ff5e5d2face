"""The soak's CI form: a minute of a churning fleet, and memory stays bounded by max_streams.

``bench/soak.py`` runs as a subprocess, so the RSS it samples is one worker's, not the
test session's. In that minute far more distinct streams pass through than fit
(``max_streams=200``): anything kept per stream that was ever seen would show.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soaklib import trend

ROOT = Path(__file__).resolve().parents[2]
MAX_STREAMS = 200


def test_a_steady_leak_is_told_apart_from_noise() -> None:
    minutes = [i / 12 for i in range(60)]  # 5 minutes, a sample every 5 s
    wiggle = [3.0 * (-1) ** i for i in range(60)]  # MB of scatter around the level
    leak = trend(minutes, [600 + 2 * m + w for m, w in zip(minutes, wiggle, strict=True)])
    flat = trend(minutes, [600 + w for w in wiggle])
    assert leak is not None and flat is not None
    assert abs(leak.slope_per_min - 2) < 0.1 and not leak.within_noise  # 2 MB/min
    assert abs(flat.slope_per_min) < 0.1 and flat.within_noise
    assert trend([0.0, 1.0], [1.0, 2.0]) is None  # too few samples for a slope


@pytest.mark.slow
def test_a_minute_of_churn_keeps_memory_bounded_by_max_streams(tmp_path: Path) -> None:
    plot = tmp_path / "soak.png"
    cmd = [sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", "1"]
    cmd += ["--max-streams", str(MAX_STREAMS), "--sample-s", "2", "--out", str(plot), "--json"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(done.stdout.splitlines()[-1])

    # The fleet churned: streams appeared, were evicted both ways, returned; a reload ran.
    assert r["first_full_min"] is not None
    assert r["streams_appeared"] >= 10 * MAX_STREAMS
    assert r["streams_returned"] > 0
    assert r["evictions_lru"] > 0 and r["evictions_idle"] > 0
    assert r["model_reloads"] == 1
    # Nothing was lost on the way: every reading scored, every bad message dead-lettered.
    assert r["readings"] == r["readings_produced"]
    assert r["dead_letters"] == r["bad_messages"] > 0

    # Bounded by max_streams: resident state, bookkeeping and checkpoints never held more
    # (a checkpoint record is at most twice a slot's bytes: its header is JSON).
    assert r["active_streams_max"] == MAX_STREAMS
    assert r["tracked_streams_max"] <= MAX_STREAMS
    record_bound = 2 * r["bytes_per_stream"]
    assert r["checkpoint_bytes_max"] <= MAX_STREAMS * record_bound
    assert r["state_dir_bytes_max"] <= MAX_STREAMS * record_bound
    # Over the second half the process grew by less than half of what keeping the state
    # of the streams that appeared meanwhile would have cost.
    kept = r["streams_appeared_second_half"] * r["bytes_per_stream"]
    assert r["rss_growth_second_half_bytes"] < kept / 2, r["second_half"]["rss_bytes"]
    assert r["second_half"]["active_streams"]["max"] <= MAX_STREAMS
    assert plot.stat().st_size > 10_000
