"""Simulated fleets of several styles, the baseline and incident scoring (training.fleet)."""

from __future__ import annotations

import doctest
import itertools

import numpy as np
import pytest

from training.data import StreamSeries
from training.fleet import baseline, score, styles
from training.fleet.baseline import Baseline
from training.fleet.score import Flagged, clean_rates, incidents_from_flags, label_scores
from training.fleet.styles import DURATIONS, KINDS, STYLES, Label, generate, to_readings

SMALL = {"streams": 4, "history": 400, "evaluation": 900}


def small(style: str, seed: int = 1) -> styles.FleetData:
    return generate(style, seed, **SMALL)


@pytest.mark.parametrize("module", [styles, score, baseline])
def test_docstring_examples_run(module: object) -> None:
    assert doctest.testmod(module, raise_on_error=True).attempted > 0  # type: ignore[arg-type]


def test_same_seed_same_fleet_other_seed_other_fleet() -> None:
    a, b, c = small("mixed", 1), small("mixed", 1), small("mixed", 2)
    for x, y in zip(a.anomalous + a.history, b.anomalous + b.history, strict=True):
        assert np.array_equal(x.ts_ms, y.ts_ms)
        assert np.array_equal(x.values, y.values, equal_nan=True)
    assert a.labels == b.labels
    assert not np.allclose(a.history[0].values[:50], c.history[0].values[:50], equal_nan=True)


def test_every_kind_injected_labelled_within_the_segment_and_only_there() -> None:
    for name in ("daily", "irregular"):
        fleet = small(name)
        assert {lab.kind for lab in fleet.labels} == set(KINDS)
        for s_clean, s_bad in zip(fleet.clean, fleet.anomalous, strict=True):
            labs = [lab for lab in fleet.labels if lab.stream_id == s_clean.stream_id]
            inside = np.zeros(len(s_clean), dtype=bool)
            for lab in labs:
                lo, hi = DURATIONS[lab.kind]
                span = (lab.end_ms - lab.start_ms) / (fleet.style.period_s * 1000)
                assert lo - 1 <= span + 1 <= hi + 1
                assert s_clean.ts_ms[0] <= lab.start_ms <= lab.end_ms <= s_clean.ts_ms[-1]
                win = (s_clean.ts_ms >= lab.start_ms) & (s_clean.ts_ms <= lab.end_ms)
                ch = fleet.features.index(lab.channel)
                changed = s_bad.values[win, ch] != s_clean.values[win, ch]
                assert changed.any(), lab  # the anomaly is really there
                inside |= win
            same = s_bad.values[~inside] == s_clean.values[~inside]
            assert (same | np.isnan(s_clean.values[~inside])).all()


def test_sizes_are_the_documented_constants() -> None:
    fleet = small("daily")
    for lab in fleet.labels:
        if lab.kind in ("spike", "level_shift", "drift"):
            lo, hi = styles.SIZES[lab.kind]
            assert lo - 1e-6 <= lab.size_u <= hi + 1e-6, lab


def test_styles_differ_where_they_say() -> None:
    q = small("quantised")
    for s in q.history:  # every channel on its own grid
        for c in range(s.values.shape[1]):
            steps = np.diff(np.unique(s.values[:, c]))
            assert np.allclose(steps / steps.min(), np.round(steps / steps.min()), atol=1e-2)
    irr = small("irregular")
    gaps = np.diff(irr.history[0].ts_ms)
    assert gaps.std() > 0.1 * gaps.mean() and gaps.min() > 0
    assert len(irr.history[0]) < SMALL["history"]  # dropped readings
    assert np.isnan(irr.history[0].values).any()
    daily = small("daily")
    assert not np.isnan(daily.history[0].values).any()
    assert np.ptp(np.diff(daily.history[0].ts_ms)) == 0
    assert len({s.channels for s in STYLES.values()} & {3, 4, 5, 6}) >= 3


def test_to_readings_is_time_ordered_and_complete() -> None:
    fleet = small("irregular")
    rs = to_readings(fleet.clean)
    assert len(rs) == sum(len(s) for s in fleet.clean)
    assert all(a.ts_ms <= b.ts_ms for a, b in itertools.pairwise(rs))


def test_incidents_from_flags_merges_runs_closer_than_resolve_after() -> None:
    flags = [0, 1, 1, 0, 0, 1] + [0] * 5 + [1]
    opened, inside = incidents_from_flags(flags, resolve_after=3)
    assert opened.nonzero()[0].tolist() == [1, 11]
    assert inside.nonzero()[0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 11]


def _rows(opened: set[int], inside: set[int], n: int = 40, sid: str = "s") -> list[Flagged]:
    return [Flagged(sid, t * 10, t in opened, t in inside | opened) for t in range(n)]


def test_an_incident_inside_a_label_counts_once_one_outside_is_false() -> None:
    lab = Label("s", "level_shift", 100, 150, "ch0", 5.0)
    # opens at t=12 (ts 120) inside the label, reopens at 14 inside it too, and at 30 outside
    rows = _rows({12, 14, 30}, {13, 15, 16})
    res = label_scores(rows, [lab], tolerance_ms=20)
    assert res["caught"] == 1 and res["recall"] == 1.0
    assert res["incidents"] == 3 and res["false_incidents"] == 1
    assert res["precision"] == pytest.approx(2 / 3)
    assert res["recall_by_kind"] == {"level_shift": 1.0}


def test_tolerance_and_incidents_open_before_the_label() -> None:
    lab = Label("s", "spike", 100, 100, "ch0", 8.0)
    late = label_scores(_rows({12}, set()), [lab], tolerance_ms=20)
    assert late["caught"] == 1  # 20 ms after the end: within the tolerance
    too_late = label_scores(_rows({13}, set()), [lab], tolerance_ms=20)
    assert too_late["caught"] == 0 and too_late["false_incidents"] == 1
    # an incident open since before the label is not a detection, nor a false alarm
    spanning = label_scores(_rows({5}, set(range(5, 20))), [lab], tolerance_ms=20)
    assert spanning["caught"] == 0 and spanning["false_incidents"] == 0
    other_stream = label_scores(_rows({10}, set(), sid="t"), [lab], tolerance_ms=20)
    assert other_stream["caught"] == 0 and other_stream["false_incidents"] == 1


def test_clean_rates_per_10k_split_cold_and_warm() -> None:
    rows = [
        Flagged(sid, t, t in (10, 1500), t in (10, 11, 1500))
        for sid in ("a", "b")
        for t in range(3000)
    ]
    r = clean_rates(rows, cold=1000)
    assert r["cold"]["readings"] == 2000 and r["warm"]["readings"] == 4000
    assert r["cold"]["false_per_10k"] == 10.0  # 2 incidents in 2,000 readings
    assert r["warm"]["false_per_10k"] == 5.0  # 2 in 4,000
    assert r["all"]["share_in_incidents"] == pytest.approx(6 / 6000)


def _series(values: np.ndarray, start: int = 0, sid: str = "s") -> StreamSeries:
    ts = (start + np.arange(len(values), dtype=np.int64)) * 60_000
    return StreamSeries(sid, ts, values.astype(np.float32))


def test_baseline_flags_a_big_spike_and_nothing_on_clean_noise() -> None:
    rng = np.random.default_rng(3)
    base = Baseline().fit([_series(rng.normal(size=(2000, 3)))])
    clean = base.flags(_series(rng.normal(size=(1500, 3)), 2000))
    assert clean.sum() <= 5
    spiked = rng.normal(size=(1500, 3))
    spiked[700, 2] += 12.0
    rows = base.replay([_series(spiked, 2000)])
    opened = [i for i, r in enumerate(rows) if r.anomaly]
    assert 700 in opened and len(opened) <= 4


def test_baseline_on_a_constant_stream_and_missing_cells() -> None:
    flat = np.full((500, 2), 3.0)
    flat[::7, 1] = np.nan
    base = Baseline().fit([_series(flat)])
    assert not base.flags(_series(flat, 500)).any()
    with pytest.raises(KeyError, match="no history"):
        base.flags(_series(flat, sid="unknown"))
