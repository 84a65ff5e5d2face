"""The flatline rule's limits, read off clean history the way the engine counts repeats."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from detector.core.rules import FlatlineConfig
from detector.core.scoring import ScoringConfig
from tests.unit.factories import make_bundle
from training.calibrate import run_engine
from training.data import StreamSeries
from training.flatlinecal import stuck_limits


def _series(column: list[float], moving: int = 2) -> StreamSeries:
    n = len(column)
    rng = np.random.default_rng(0)
    values = np.column_stack([np.array(column, np.float32), *rng.normal(size=(moving, n))])
    return StreamSeries("s", np.arange(n, dtype=np.int64) * 1000, values.astype(np.float32))


def test_a_history_replayed_with_its_own_limits_opens_no_flatline_incident() -> None:
    # A quantised sensor holds 2.0 for 12 readings, two of them lost in transit. The engine
    # compares each reading with the last one observed, so its run is 9 repeats, not 3 and
    # 3 and 1: limits measured with the gaps as breaks (7) flagged the sensor's own history.
    a = float("nan")
    hist = _series([0.0, 1.0] + [2.0] * 4 + [a] + [2.0] * 4 + [a] + [2.0] * 2 + [3.0, 4.0] * 20)
    limits = stuck_limits([hist], 3)
    assert limits[0] == 2 * 9 + 1
    bundle = make_bundle(features=3)
    scoring = replace(ScoringConfig(), threshold=float("inf"), flatline=FlatlineConfig(limits))
    run = run_engine(bundle.module, bundle.scaler, bundle.features, [hist], scoring)
    assert not run.opened.any()
    broken = replace(scoring, flatline=FlatlineConfig((7, 5, 5)))  # the gaps as breaks
    run = run_engine(bundle.module, bundle.scaler, bundle.features, [hist], broken)
    assert run.opened.sum() == 1


def test_the_longest_run_of_any_stream_sets_the_limit() -> None:
    quiet = _series([float(v) for v in range(50)])
    held = _series([0.0] * 8 + [float(v) for v in range(1, 43)])  # 7 repeats
    assert stuck_limits([quiet], 3)[0] == 5  # no repeat seen: the floor
    assert stuck_limits([quiet, held], 3)[0] == 15
    assert stuck_limits([quiet, _series([1.0] * 30)], 3)[0] == 0  # repeats are normal: off
