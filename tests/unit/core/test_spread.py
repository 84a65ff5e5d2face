"""Each stream judged against its own noise (``ScoringConfig.own_scale``)."""

from __future__ import annotations

import numpy as np
import torch

from detector.core.incidents import RULE_NAMES
from detector.core.peak import PeakConfig
from detector.core.scoring import ScoringConfig
from detector.core.spread import OWN_MEMORY, own_errors, own_scale_step
from tests.unit.factories import clean_series, make_bundle
from training.calibrate import run_engine

PEAK_BIT = 1 << RULE_NAMES.index("peak")


def _rms_by_stream(own: bool) -> tuple[np.ndarray, np.ndarray]:
    series = clean_series(2, 2000, seed=5)
    series[1].values[:] *= 3.0  # the same sensor, three times as noisy
    series[0].values[1500, 0] += 2.5  # on the quiet one: 8 of its sd, under 3 of the other's
    b = make_bundle(features=2)
    cfg = ScoringConfig(threshold=float("inf"), warmup=10, own_scale=own, peak=PeakConfig(4.0))
    run = run_engine(b.module, b.scaler, b.features, series, cfg)
    late = run.index >= 1000
    rms = np.array([np.sqrt((run.errors[late & (run.stream == s)] ** 2).mean()) for s in (0, 1)])
    peak = (run.rules & PEAK_BIT) != 0
    flagged = np.array([peak[run.stream == s].sum() for s in (0, 1)])
    return rms, flagged


def test_a_noisy_stream_and_a_quiet_one_are_each_judged_by_their_own_noise() -> None:
    rms, flagged = _rms_by_stream(own=False)
    assert rms[1] / rms[0] > 2.5  # the fleet's scale: the noisy stream errs three times as much
    own_rms, own_flagged = _rms_by_stream(own=True)
    # Its own: both err about as much (the fleet's prior keeps a tenth of the weight, which
    # holds a quiet stream's spread up a little).
    assert 0.9 < own_rms[1] / own_rms[0] < 1.25
    # The quiet stream's jump stands out against its own noise; the noisy stream's normal
    # readings no longer flag by the dozen.
    assert own_flagged[0] >= 1 and own_flagged[1] < flagged[1]


def test_an_anomaly_teaches_a_stream_little_and_a_new_stream_starts_from_the_fleet() -> None:
    n, ms = torch.zeros(1, 1), torch.zeros(1, 1)
    observed = torch.ones(1, 1, dtype=torch.bool)
    rng = np.random.default_rng(0)
    _, _, spread = own_errors(torch.zeros(1, 1), observed, n, ms)
    assert spread.item() == 1.0  # the fleet's whitened unit until the stream has its own
    for v in rng.standard_normal(OWN_MEMORY) * 2.0:  # a stream twice as noisy as the fleet
        e = torch.tensor([[float(v)]])
        _, _, spread = own_errors(e, observed, n, ms)
        n, ms = own_scale_step(e, spread, observed, n, ms)
    _, _, learned = own_errors(torch.zeros(1, 1), observed, n, ms)
    assert n.item() == OWN_MEMORY and 1.7 < learned.item() < 2.2
    for _ in range(30):  # a deviation of 20 units for 30 readings, as if nobody flagged it
        e = torch.full((1, 1), 20.0)
        _, _, spread = own_errors(e, observed, n, ms)
        n, ms = own_scale_step(e, spread, observed, n, ms)
    _, _, after = own_errors(torch.zeros(1, 1), observed, n, ms)
    assert after.item() < 1.25 * learned.item()  # each reading entered at 3 spreads at most


def test_a_channel_that_reports_one_reading_in_thirty_learns_its_own_spread() -> None:
    # Two channels err alike; the second reports only every 30th reading (a slower sensor
    # merged into the stream's records). Counted per stream, its mean square took thirty
    # times as many steps as it had values: a spread of a third of its own, and its first
    # ordinary values judged at three times their size (false incidents).
    rng = np.random.default_rng(1)
    n, ms = torch.zeros(1, 2), torch.zeros(1, 2)
    for t in range(3000):
        e = torch.tensor(rng.standard_normal((1, 2)) * 2.0, dtype=torch.float32)
        observed = torch.tensor([[True, t % 30 == 29]])
        _, _, spread = own_errors(torch.where(observed, e, 0.0), observed, n, ms)
        n, ms = own_scale_step(e, spread, observed, n, ms)
    assert n[0].tolist() == [1000.0, 100.0]  # each channel counts its own values
    full, sparse = ms[0].tolist()  # mean squares of errors of sd 2 (winsorised a little)
    assert 3.0 < full < 4.4 and 0.75 < sparse / full < 1.3  # a per-stream count: 0.08
