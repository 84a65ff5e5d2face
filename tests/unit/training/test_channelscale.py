"""Per-channel scales of the model's rules: a feature with heavier tails gets its own."""

from __future__ import annotations

import numpy as np

from detector.core.incidents import RULE_NAMES
from detector.core.peak import PeakConfig
from detector.core.scoring import ScoringConfig
from detector.core.spike import SpikeConfig
from tests.unit.factories import clean_series, make_bundle
from training.budget import spike_statistic
from training.calibrate import EngineRun, run_engine
from training.channelscale import measured_scales, peak_channels
from training.tail import rate_level

PEAK_BIT = 1 << RULE_NAMES.index("peak")

RATE, GAP, FLOOR = 1e-5, 10, 3.5


def _run(rng: np.random.Generator, streams: int, length: int) -> EngineRun:
    """Whitened errors of a clean replay: features 0-1 Gaussian, 2 Student t (3 dof), scaled
    to unit variance as the whitening leaves every feature."""
    n = streams * length
    errors = np.c_[rng.standard_normal((n, 2)), rng.standard_t(3, n) / np.sqrt(3.0)]
    e_prev = np.roll(errors, 1, axis=0)
    z = np.zeros(n, np.float32)
    return EngineRun(
        stream=np.repeat(np.arange(streams), length),
        index=np.tile(np.arange(length), streams),
        raw=z,
        score=z,
        errors=errors.astype(np.float32),
        observed=np.ones((n, 3), bool),
        expected=np.zeros((n, 3), np.float32),
        opened=np.zeros(n, bool),
        rules=np.zeros(n, np.int64),
        e_prev=e_prev.astype(np.float32),
    )


def test_a_heavy_tailed_feature_no_longer_sets_the_peak_threshold_for_the_others() -> None:
    rng = np.random.default_rng(5)
    runs = [_run(rng, 20, 2000), _run(rng, 10, 2000)]  # two calibration parts, pooled
    base = ScoringConfig(peak=PeakConfig(), spike=SpikeConfig())
    scorings = measured_scales(runs, [base, base], {"peak": RATE, "spike": RATE}, GAP, FLOOR)
    peak, spike = scorings[1].peak, scorings[1].spike
    assert peak is not None and spike is not None and scorings[0] == scorings[1]
    assert max(peak.scale[:2]) < 1.2 < 2.0 < peak.scale[2], peak.scale
    # a pair is the smaller of two errors: iid errors' pairs stay under the floor, all 1
    assert spike.scale == (1.0, 1.0, 1.0), spike.scale
    # One threshold for the scaled statistic: the Gaussian features are judged near their
    # own level again instead of the heavy one's.
    run = runs[0]
    stat = peak_channels(run)
    plain = rate_level(stat.max(axis=1), run.stream, RATE, GAP, FLOOR)
    scaled = rate_level((stat / np.asarray(peak.scale)).max(axis=1), run.stream, RATE, GAP, FLOOR)
    own = rate_level(stat[:, 0], run.stream, RATE, GAP, FLOOR)
    assert scaled < own * 1.2 and plain > own * 1.8, (plain, scaled, own)
    assert np.all(spike_statistic(run, spike.scale) <= spike_statistic(run) + 1e-9)


def test_an_unmeasured_rule_is_left_as_it_is() -> None:
    runs = [_run(np.random.default_rng(1), 4, 500)]
    base = ScoringConfig(peak=None, spike=SpikeConfig(4.0))
    (got,) = measured_scales(runs, [base], {"spike": RATE}, GAP, FLOOR)
    assert got.peak is None and got.spike is not None and got.spike.threshold == 4.0
    assert len(got.spike.scale) == 3


def test_the_engine_flags_what_the_budget_measures_with_a_feature_scaled() -> None:
    series = clean_series(4, 400, seed=2)
    for s in series[:2]:
        s.values[200, 1] += 40.0 * s.values[:200, 1].std()  # a spike on feature 1
    b = make_bundle(features=2)
    hits = {}
    for scale in ((1.0, 1.0), (1.0, 40.0)):
        cfg = ScoringConfig(threshold=float("inf"), warmup=10, peak=PeakConfig(3.0, scale))
        run = run_engine(b.module, b.scaler, b.features, series, cfg)
        live = (run.rules & PEAK_BIT) != 0
        stat = (peak_channels(run) / np.asarray(scale)).max(axis=1)
        assert np.array_equal(live, stat >= 3.0)  # the budget's statistic, reading by reading
        spikes = (run.stream < 2) & (run.index == 200)
        hits[scale[1]] = int(live[spikes].sum())
    assert hits == {1.0: 2, 40.0: 0}, hits
