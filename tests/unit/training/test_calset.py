"""What each calibration part measures on: held-out streams whole, or warmed-up tails; and
what sets the scale, the whitening and the no-model rules' priors: the fleet, sampled when
it is large, so that errors are scaled as the live engine scales them."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from detector.core.scoring import ScoringConfig
from tests.unit.factories import make_bundle
from training import calset
from training.calibrate import calibrate_detail, equalize_and_whiten, run_engine
from training.calset import CONTEXT, calibration_set, unheld
from training.data import StreamSeries, folds
from training.fit import FitResult


def _fleet(lengths: list[int]) -> list[StreamSeries]:
    return [
        StreamSeries(f"s{i}", np.arange(n, dtype=np.int64), np.zeros((n, 2), np.float32))
        for i, n in enumerate(lengths)
    ]


NO_FIT = FitResult(None, None, [], 1, {}, 0.0, "cpu", [])  # type: ignore[arg-type]


def test_a_long_streams_calibration_replays_its_tail_with_a_warm_up_not_all_of_it() -> None:
    # One stream of 20,000 readings, 4,000 held out at its end: each calibration replay
    # runs CONTEXT readings before them to warm up, not the 16,000.
    long = StreamSeries("s", np.arange(20_000, dtype=np.int64), np.zeros((20_000, 2), np.float32))
    res = FitResult(None, None, [], 1, {}, 0.0, "cpu", [16_000])  # type: ignore[arg-type]
    cs = calibration_set([long], [], res, [0])
    assert len(cs.series[0]) == 4_000 + CONTEXT
    assert cs.collect_from == [CONTEXT]
    assert cs.series[0].ts_ms[cs.collect_from[0]] == 16_000  # the same first measured reading
    # A sensor's normal repeats may lie anywhere in it: the flatline limits see it whole.
    assert len(cs.history[0]) == 20_000


def test_errors_are_equalised_on_the_whole_fleet_and_thresholds_measured_on_held_out_streams() -> (
    None
):
    # Whitened on the held-out streams alone, their errors have RMS 1 by construction, and
    # thresholds measured on them assumed a spread the rest of the fleet exceeded (coloured
    # dev seed 1: 1.4 on two channels; docs/quality.md, session 17).
    fleet = _fleet([400] * 11 + [CONTEXT + 600])
    cs = calibration_set(fleet, [2, 5, 9], NO_FIT, [])
    assert [s.stream_id for s in cs.series] == ["s2", "s5", "s9"]
    assert [s.stream_id for s in cs.scale_series] == [s.stream_id for s in fleet]
    assert len(cs.scale_series[-1]) == CONTEXT  # a long history: its last CONTEXT readings
    assert cs.scale_from == [100] * 12  # a cold state settles first, as in calibration
    # A run of repeats needs no model: the flatline limits see every stream's history.
    assert [s.stream_id for s in cs.history] == [s.stream_id for s in fleet]


def test_a_large_fleets_scale_and_priors_come_from_a_spread_sample_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The shift rule's prior walks its streams' readings in one array: 100,000 streams would
    # need ~24 GB there. A sample sets them; every fold lends its share of it, and the
    # thresholds are still measured on every held-out stream, the flatline limits on all.
    monkeypatch.setattr(calset, "SCALE_STREAMS", 8)
    fleet = _fleet([400] * 40)
    split = folds(fleet, 0.25)
    cs = calibration_set(fleet, split[0], NO_FIT, [])
    picked = {s.stream_id for s in cs.scale_series}
    assert len(picked) == 8
    for fold in split:
        assert len(picked & {fleet[i].stream_id for i in fold}) == 2
    assert [s.stream_id for s in cs.series] == [fleet[i].stream_id for i in split[0]]
    assert len(cs.history) == 40
    # The same streams whatever order the history arrived in.
    back = list(reversed(fleet))
    again = calibration_set(back, folds(back, 0.25)[0], NO_FIT, [])
    assert {s.stream_id for s in again.scale_series} == picked


def test_with_no_stream_held_out_every_tail_is_calibrated_on_and_a_sample_sets_the_scale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(calset, "SCALE_STREAMS", 8)
    fleet = _fleet([400] * 40)
    cs = unheld(fleet, [100] * 40, fleet)
    assert len(cs.series) == 40 and cs.collect_from == [100] * 40  # every tail's thresholds
    assert len(cs.scale_series) == 8 and cs.scale_from == [100] * 8
    few = unheld(fleet[:8], list(range(8)), fleet[:8])  # a small fleet: every one, in order
    assert few.scale_series == few.series and few.scale_from == list(range(8))


def test_with_own_scale_the_error_prior_describes_the_raw_error_the_engine_scores() -> None:
    # Streams of three noise levels, two correlated channels: the whitening is measured on
    # the fleet's errors and each stream's own scale divides the whitened ones, as live.
    rng = np.random.default_rng(0)
    series = []
    for i, k in enumerate([0.5, 1.0, 2.0]):
        z = rng.standard_normal((800, 2))
        v = np.stack([z[:, 0], 0.8 * z[:, 0] + 0.6 * z[:, 1]], 1) * k * np.array([1.0, 3.0])
        series.append(StreamSeries(f"s{i}", 60_000 * np.arange(800, dtype=np.int64), v))
    b = make_bundle(features=2)
    base = ScoringConfig(protect_state=False, own_scale=True)
    cal = calibrate_detail(b.module, b.scaler, b.features, series, base, whiten=True)
    scoring = replace(cal.scoring, threshold=math.inf)
    live = run_engine(b.module, b.scaler, b.features, series, scoring)
    assert cal.scoring.own_scale and cal.scoring.whiten
    np.testing.assert_allclose(cal.raw, live.raw[live.observed.any(axis=1)], rtol=1e-5)


def test_the_whitening_decorrelates_the_whole_fleets_errors_not_the_held_out_streams() -> None:
    # Live, the whitening applies to every stream: measured on the whole fleet, the fleet's
    # equalised errors come out with unit covariance; the held-out streams keep their own.
    rng = np.random.default_rng(1)
    series = []
    for i, rho in enumerate([0.9] * 3 + [0.0] * 3):
        z = rng.standard_normal((600, 2))
        v = np.stack([z[:, 0], rho * z[:, 0] + math.sqrt(1 - rho**2) * z[:, 1]], 1)
        series.append(StreamSeries(f"s{i}", 60_000 * np.arange(600, dtype=np.int64), v))
    b = make_bundle(features=2)
    module, scaler, _, w = equalize_and_whiten(b.module, b.scaler, b.features, series)
    base = replace(ScoringConfig(), threshold=math.inf, protect_state=False, whiten=w)
    run = run_engine(module, scaler, b.features, series, base)  # its errors are whitened
    whitened = run.errors.astype(np.float64)
    np.testing.assert_allclose(np.cov(whitened, rowvar=False), np.eye(2), atol=0.08)
    held = np.isin(run.stream, [0, 1, 2])  # the correlated half alone is not white
    assert np.corrcoef(whitened[held], rowvar=False)[0, 1] > 0.3
