"""`bench/latency.py`'s summary: a run that timed nothing says so instead of crashing."""

from __future__ import annotations

import pytest

from bench.latency import delay_quantiles


def test_delays_in_ms_without_the_first_tenth() -> None:
    got = delay_quantiles([9.0] + [0.010] * 5 + [0.020] * 4)  # 9 s: a connection's start
    assert got["max_ms"] == pytest.approx(20.0)
    assert got["p50_ms"] == pytest.approx(10.0)


def test_no_delay_timed_gives_none_not_a_crash() -> None:
    # --seconds 2 at 2,000 readings/s over 500 streams: every reading inside the warm-up,
    # no incident opens, and the benchmark crashed on the empty percentile.
    assert delay_quantiles([]) == {"p50_ms": None, "p99_ms": None, "max_ms": None}
