"""Heavy-tailed channels read through a pseudo-log (ScoringConfig.pseudo_log)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detector.checkpointing.codec import StateShape
from detector.core.engine import Engine
from detector.core.scoring import ScoringConfig
from detector.core.tame import pseudo_log
from tests.unit.factories import make_bundle

T0 = 1_795_219_200_000
CFG = ScoringConfig(threshold=3.0, warmup=0, error_mean=0.1, error_std=0.1, incidents=None)
SCALES = (0.0, 7.0, 0.0, 0.0, 7.5, 0.0)  # centres, then scales


def _engine(scales: tuple[float, ...]) -> Engine:
    scoring = ScoringConfig(**{**CFG.__dict__, "pseudo_log": scales})
    return Engine(make_bundle(features=3, scoring=scoring), max_streams=4)


def _rates(n: int = 50) -> np.ndarray:
    rng = np.random.default_rng(0)
    v = rng.standard_normal((n, 3)).astype(np.float32)
    v[:, 1] = rng.lognormal(2.0, 1.0, n)  # a request rate
    v[7, 1] = np.nan
    return v


def test_the_engine_judges_a_heavy_tailed_channel_in_its_pseudo_log() -> None:
    v, ts = _rates(), T0 + 60_000 * np.arange(50)
    read = _engine(SCALES).process(["s"] * 50, ts, v, 0)
    given = _engine(()).process(["s"] * 50, ts, pseudo_log(v, SCALES), 0)
    # the same units (to float32 rounding: torch's asinh and numpy's), the same verdicts
    np.testing.assert_allclose(read.score, given.score, rtol=1e-4)
    np.testing.assert_allclose(read.errors, given.errors, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(read.anomalous, given.anomalous)
    assert read.errors[7, 1] == 0.0  # a missing value stays missing
    # the expectation comes back in the units the reading came in
    back = 7.0 + 7.5 * np.sinh(given.expected[:, 1])
    np.testing.assert_allclose(read.expected[:, 1], back, rtol=1e-5)
    np.testing.assert_allclose(read.expected[:, [0, 2]], given.expected[:, [0, 2]], rtol=1e-5)


def test_zero_negative_and_huge_values_stay_readings() -> None:
    v = np.array([[0.0, 0.0, 0.0], [0.0, -40.0, 0.0], [900.0, 3e38, 1e5]], np.float32)
    res = _engine(SCALES).process(["s"] * 3, T0 + np.arange(3), v, 0)  # (warnings fail tests)
    assert np.isfinite(res.errors).all() and res.errors[1, 1] != 0.0
    assert np.isfinite(res.expected).all()


def test_pseudo_log_round_trips_restarts_streams_and_names_what_is_wrong() -> None:
    assert ScoringConfig.from_dict(ScoringConfig(pseudo_log=SCALES).to_dict()).pseudo_log == SCALES
    with pytest.raises(ValueError, match="F finite centres, then F finite scales >= 0"):
        ScoringConfig(pseudo_log=(1.0, -1.0))
    with pytest.raises(ValueError, match="F finite centres"):
        ScoringConfig(pseudo_log=(math.inf, 1.0))
    with pytest.raises(ValueError, match="F finite centres"):
        ScoringConfig(pseudo_log=(1.0, 1.0, 1.0))
    plain, tamed = (
        make_bundle(features=3),
        make_bundle(features=3, scoring=_engine(SCALES).bundle.scoring),
    )
    eng = Engine(plain, max_streams=4)
    eng.process(["s"], np.array([T0]), np.zeros((1, 3), np.float32), 0)
    assert not eng.swap(tamed)  # its statistics are in other units
    width = eng.store.stat_width
    assert StateShape.of(plain, width).digest != StateShape.of(tamed, width).digest
