"""The trainer: reproducible fits, masked loss, early stopping, each rule calibrated on what the
engine keeps, the artifact and its report."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.artifacts import load_current
from detector.core.bundle import ModelBundle
from detector.core.difference import DifferenceConfig
from detector.core.engine import Engine
from detector.core.level import LevelConfig
from detector.core.rules import SustainConfig
from detector.core.schema import Reading
from detector.core.scoring import ScoringConfig
from detector.core.shift import ShiftConfig
from detector.core.statsrow import LAYOUT
from detector.replay import score_stream
from detector.sandbox.simulation import FleetSpec
from training.batches import fit_scaler
from training.budget import fit_budget
from training.calibrate import (
    calibrate_detail,
    equalize_errors,
    run_engine,
    sustained_averages,
)
from training.data import (
    StreamSeries,
    from_simulation,
)
from training.diffcal import difference_prior
from training.fit import FitConfig, _masked_se, fit, validation_loss
from training.ruleopts import add_rule_options, base_scoring
from training.shiftcal import shift_prior, shift_walk
from training.tail import tail_threshold

TINY = FitConfig(hidden=8, layers=1, window=16, batch_size=4, epochs=2, device="cpu", threads=1)
SPEC = FleetSpec(streams=4, anomaly_rate=0.0, seed=3)
PNG = b"\x89PNG\r\n\x1a\n"


def _series(ticks: int = 160) -> list[StreamSeries]:
    return from_simulation(SPEC, ticks)


def test_same_seed_gives_identical_weights_on_cpu() -> None:
    a = fit(_series(), SPEC.features, TINY).module.state_dict()
    b = fit(_series(), SPEC.features, TINY).module.state_dict()
    c = fit(_series(), SPEC.features, replace(TINY, seed=1)).module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_scaler_ignores_missing_values() -> None:
    v = np.array([[1.0, np.nan], [3.0, 10.0], [np.nan, 20.0]], np.float32)
    s = StreamSeries("s", np.arange(3, dtype=np.int64), v)
    sc = fit_scaler([s], [3], floor=1e-3)
    assert sc.mean == pytest.approx((2.0, 15.0))
    assert sc.std == pytest.approx((math.sqrt(2.0), math.sqrt(50.0)))


def test_a_channel_in_small_units_keeps_its_own_spread_and_a_constant_gets_the_floor() -> None:
    # ~2e-6 moving by ~6e-8 was floored at 1e-3: invisible to the model, and the replay
    # of its own clean history opened an incident on every stream
    rng = np.random.default_rng(0)
    tiny = 2e-6 + 6.5e-8 * rng.standard_normal(500)
    values = np.stack([tiny, np.full(500, 7.0), np.full(500, 0.0)], axis=1).astype(np.float64)
    s = StreamSeries("s", np.arange(500, dtype=np.int64), values)
    sc = fit_scaler([s], [500], floor=1e-3)
    assert sc.std[0] == pytest.approx(6.5e-8, rel=0.1)
    assert sc.std[1:] == pytest.approx((7e-3, 1e-3))  # constant: a unit relative to the level


def test_missing_targets_do_not_count_in_the_loss() -> None:
    pred = torch.zeros(1, 3, 2)
    target = torch.tensor([[[1.0, math.nan], [2.0, 1.0], [math.nan, math.nan]]])
    rows = torch.ones(1, 3, dtype=torch.bool)
    se, n = _masked_se(pred, target, rows, torch.ones(2))
    assert (float(se), int(n)) == (6.0, 3)  # 1 + 4 + 1 over the three observed targets


def test_training_survives_missing_values() -> None:
    series = _series()
    holes = [StreamSeries(s.stream_id, s.ts_ms, s.values.copy()) for s in series]
    for s in holes:
        s.values[::7, 1] = np.nan
    res = fit(holes, SPEC.features, TINY)
    assert all(math.isfinite(h["val_loss"]) for h in res.history)


def test_early_stopping_keeps_the_best_epoch() -> None:
    # A learning rate this high makes the validation loss wander: the kept epoch must be the
    # best one, not the last.
    cfg = replace(TINY, epochs=8, patience=3, lr=0.3)
    series = _series()
    res = fit(series, SPEC.features, cfg)
    losses = [h["val_loss"] for h in res.history]
    assert res.best_epoch == int(np.argmin(losses)) + 1
    again = validation_loss(res.module, res.scaler, series, res.split, res.loss_weights, cfg)
    assert again == pytest.approx(losses[res.best_epoch - 1], rel=1e-4)


def test_equalized_model_expects_the_same_readings() -> None:
    series = _series()
    res = fit(series, SPEC.features, TINY)
    m2, sc2, _ = equalize_errors(res.module, res.scaler, SPEC.features, series)
    a = run_engine(res.module, res.scaler, SPEC.features, series, ScoringConfig())
    b = run_engine(m2, sc2, SPEC.features, series, ScoringConfig())
    np.testing.assert_allclose(a.expected, b.expected, rtol=1e-4, atol=1e-4)


def test_a_channel_constant_in_history_errs_only_when_it_moves() -> None:
    # Public multivariate data often has channels that never change (a spare input at 0).
    # The fit learns nothing about one, and its wobbling expectation, whitened against an
    # error that small, used to fire the peak rule on clean data again and again.
    series = [
        StreamSeries(s.stream_id, s.ts_ms, np.column_stack([s.values, np.full(len(s), 2.5)]))
        for s in _series()
    ]
    features = (*SPEC.features, "spare")
    res = fit(series, features, TINY)
    module, scaler, _ = equalize_errors(res.module, res.scaler, features, series)
    look = ScoringConfig(threshold=math.inf, protect_state=False)  # feed every reading as is
    clean = run_engine(module, scaler, features, series, look, collect_from=[0] * 4)
    assert np.all(clean.errors[:, -1] == 0.0)
    moved = [StreamSeries(s.stream_id, s.ts_ms, s.values.copy()) for s in series]
    moved[1].values[100:, -1] = 2.6
    run = run_engine(module, scaler, features, moved, look, collect_from=[0] * 4)
    at = np.flatnonzero((run.stream == 1) & (run.index == 100))[0]
    assert abs(run.errors[at, -1]) > 100 * np.abs(clean.errors[:, :-1]).max()
    # It moves nothing else: every other channel is expected as on the clean history.
    np.testing.assert_array_equal(run.expected[:, :-1], clean.expected[:, :-1])


def test_tail_threshold_reaches_rates_beyond_the_validation_set() -> None:
    # Exponential scores: P(S > t) = exp(-t), so the rate 1e-5 sits at ln(1e5) = 11.5,
    # far beyond the largest of 20,000 validation scores (~10).
    scores = np.random.default_rng(0).exponential(1.0, 20_000).astype(np.float32)
    assert tail_threshold(scores, 1e-5) == pytest.approx(math.log(1e5), rel=0.05)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model published by ``anomalyd train --source simulate`` on tiny sizes."""
    from detector.cli import main

    out = tmp_path_factory.mktemp("models")
    rc = main(
        [
            "train",
            "--source",
            "simulate",
            "--sim-streams",
            "4",
            "--sim-ticks",
            "200",
            "--epochs",
            "2",
            "--hidden",
            "8",
            "--layers",
            "1",
            "--window",
            "16",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--name",
            "tiny",
            "--sustain",
            "10",
        ]
    )
    assert rc == 0
    return out


def test_cli_publishes_a_current_version_with_a_report(trained: Path) -> None:
    version = trained / (trained / "CURRENT").read_text().strip()
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["name"] == "tiny"
    assert manifest["data_range"]["streams"] == 4
    assert manifest["scoring"]["threshold"] >= 3.5
    # the sustained rule as asked, calibrated; the nowcast readout by default
    assert manifest["scoring"]["sustained"]["span"] == 10
    assert manifest["scoring"]["sustained"]["threshold"] >= 3.5
    assert len(manifest["scoring"]["sustained"]["scale"]) == 4
    assert manifest["architecture"]["nowcast"] is True
    assert manifest["training"]["seed"] == 0
    pngs = sorted((version / "report").glob("*.png"))
    assert {p.name for p in pngs} >= {"loss.png", "scores.png", "reconstruction-0.png"}
    for p in pngs:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 1000
    assert "threshold" in (version / "report" / "index.md").read_text()


def test_artifact_loads_in_a_fresh_process(trained: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from detector.artifacts import load_current; "
        "b = load_current(Path(sys.argv[1])); print(b.label, ','.join(b.features))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(trained)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.strip() == "tiny@v1 temp,vibration,pressure,current"
    assert load_current(trained).scoring.error_std > 0


def _score_all(engine: Engine, series: list[StreamSeries]) -> None:
    """Every reading of ``series`` through ``engine``, in time order as live."""
    readings = [
        Reading(s.stream_id, int(t), tuple(v.tolist()))
        for s in series
        for t, v in zip(s.ts_ms, s.values, strict=True)
    ]
    for _ in score_stream(engine, iter(readings)):
        pass


def test_sustained_rule_is_calibrated_on_what_the_engine_keeps() -> None:
    """The trainer calibrates the sustained rule on the very averages the engine keeps."""
    series = _series(240)
    res = fit(series, SPEC.features, TINY)
    base = ScoringConfig(sustained=SustainConfig(8))
    cal = calibrate_detail(res.module, res.scaler, SPEC.features, series, base, alarm_rate=1e-3)
    sc = cal.scoring
    f = len(SPEC.features)
    assert sc.sustained is not None
    assert sc.sustains(f) and sc.sustained.threshold >= 3.5 and len(sc.sustained.scale) == f
    # The engine starts averaging at the end of warm-up: collect from there.
    run = run_engine(
        res.module, res.scaler, SPEC.features, series, sc, collect_from=[sc.warmup] * 4
    )
    avg, ready = sustained_averages(run, sc.sustained.span)
    assert ready.sum() == sum(len(s) - sc.warmup - sc.sustained.span for s in series)
    engine = Engine(ModelBundle("t", 1, SPEC.features, res.module, res.scaler, sc), max_streams=8)
    _score_all(engine, series)
    for i, s in enumerate(series):
        slot = engine.store.slot_of(s.stream_id)
        assert slot is not None
        kept = engine.store.stats[slot, LAYOUT.at("drift", f)].numpy()
        last = np.flatnonzero(run.stream == i)[-1]
        np.testing.assert_allclose(kept, avg[last], rtol=1e-4, atol=1e-5)


def test_too_little_history_turns_the_sustained_rule_off_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    series = _series(60)
    res = fit(series, SPEC.features, TINY)
    with caplog.at_level("WARNING", logger="training.calibrate"):
        cal = calibrate_detail(
            res.module,
            res.scaler,
            SPEC.features,
            series,
            ScoringConfig(sustained=SustainConfig(50)),
        )
    assert not cal.scoring.sustains(len(SPEC.features))
    assert "sustained rule off" in caplog.text and "--sustain" in caplog.text


def test_shift_rule_is_calibrated_on_what_the_engine_keeps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The shift rule's prior and threshold come from the series; the trainer's walk over
    them is the engine's, and too short a history turns the rule off, saying why."""
    series = _series(600)
    res = fit(series, SPEC.features, TINY)
    base = ScoringConfig(shift=ShiftConfig(fast=4, slow=100))
    cal = calibrate_detail(res.module, res.scaler, SPEC.features, series, base, alarm_rate=1e-3)
    sh, f = cal.scoring.shift, len(SPEC.features)
    assert sh is not None and sh.ready(f) and sh.threshold >= 3.5
    assert len(sh.prior) == f and all(v > 0 for v in sh.prior)
    quiet = replace(cal.scoring, threshold=math.inf, peak=None, flatline=None, sustained=None)
    quiet = replace(quiet, shift=replace(sh, threshold=math.inf))  # never holds its reference
    engine = Engine(
        ModelBundle("t", 1, SPEC.features, res.module, res.scaler, quiet), max_streams=8
    )
    _score_all(engine, series)
    walked, _ = shift_walk(series, res.scaler, sh, torch.tensor(sh.prior))
    for i, s in enumerate(series):
        slot = engine.store.slot_of(s.stream_id)
        assert slot is not None
        row = engine.store.stats[slot]
        d = row[LAYOUT.at("shift_fast", f)] - row[LAYOUT.at("shift_slow", f)]
        np.testing.assert_allclose(d.numpy(), walked[i][-1], rtol=1e-4, atol=1e-5)
    with caplog.at_level("WARNING", logger="training.shiftcal"):
        short = calibrate_detail(res.module, res.scaler, SPEC.features, _series(150), base)
    assert short.scoring.shift is None
    assert "shift rule off" in caplog.text and "200 readings" in caplog.text


def test_difference_rule_is_calibrated_and_the_budget_shares_with_it() -> None:
    """The difference rule's prior and threshold come from the series (no model), the
    budget gives it a share like the others', and ``--no-difference`` leaves it out."""
    series = _series(600)
    res = fit(series, SPEC.features, TINY)
    base = ScoringConfig(difference=DifferenceConfig())
    cal = calibrate_detail(res.module, res.scaler, SPEC.features, series, base, alarm_rate=1e-3)
    dc, f = cal.scoring.difference, len(SPEC.features)
    assert dc is not None and dc.ready(f) and dc.threshold >= 3.5
    assert len(dc.prior) == 2 * f and all(v > 0 for v in dc.prior)
    scoring, _ = fit_budget(
        res.module, res.scaler, SPEC.features, series, cal.scoring, 0.5, device="cpu"
    )
    assert scoring.difference is not None and scoring.difference.threshold != dc.threshold
    assert scoring.difference.prior == dc.prior  # the budget moves thresholds only
    p = argparse.ArgumentParser()
    add_rule_options(p)
    assert base_scoring(p.parse_args([])).difference == DifferenceConfig()
    assert base_scoring(p.parse_args(["--no-difference"])).difference is None


def test_level_rule_is_calibrated_and_the_budget_shares_with_it() -> None:
    """The level rule's prior, spreads, scales and threshold come from the series (no
    model), the budget gives it a share and moves its threshold only, and ``--no-level``
    turns it off (docs/quality.md, session 46)."""
    series = _series(600)
    res = fit(series, SPEC.features, TINY)
    base = ScoringConfig(level=LevelConfig())
    cal = calibrate_detail(res.module, res.scaler, SPEC.features, series, base, alarm_rate=1e-3)
    lc, f = cal.scoring.level, len(SPEC.features)
    assert lc is not None and lc.ready(f) and lc.threshold >= 2.0
    assert len(lc.scale) == len(lc.spread) == 4 * f and len(lc.prior) == f
    scoring, _ = fit_budget(
        res.module, res.scaler, SPEC.features, series, cal.scoring, 0.5, device="cpu"
    )
    assert scoring.level is not None and scoring.level.threshold != lc.threshold
    assert replace(scoring.level, threshold=lc.threshold) == lc
    p = argparse.ArgumentParser()
    add_rule_options(p)
    assert base_scoring(p.parse_args([])).level == LevelConfig()
    assert base_scoring(p.parse_args(["--no-level"])).level is None


def test_the_no_model_rules_priors_describe_the_whole_fleet() -> None:
    """Live, every stream is judged by the shipped prior: so the shift and difference
    rules' thresholds are measured under the fleet's prior, not one their few held-out
    streams would give (those differed 2-5x between folds, docs/quality.md session 28)."""
    series = _series(600)
    res = fit(series, SPEC.features, TINY)
    mid = [np.nanmean(s.values, axis=0) for s in series]
    wide = [  # two streams that move three times as much as the held-out one
        StreamSeries(f"wide-{i}", s.ts_ms, mid[i] + 3 * (s.values - mid[i]))
        for i, s in enumerate(series[1:3], start=1)
    ]
    fleet = [series[0], *wide, series[3]]
    sc = ShiftConfig(fast=4, slow=100)
    base = ScoringConfig(shift=sc, difference=DifferenceConfig())
    own = calibrate_detail(res.module, res.scaler, SPEC.features, series[:1], base, alarm_rate=1e-3)
    cal = calibrate_detail(
        res.module, res.scaler, SPEC.features, series[:1], base, alarm_rate=1e-3, prior_from=fleet
    )
    assert own.scoring.shift is not None and cal.scoring.shift is not None
    assert own.scoring.difference is not None and cal.scoring.difference is not None
    assert cal.scoring.shift.prior == shift_prior(fleet, res.scaler, sc)
    assert cal.scoring.difference.prior == difference_prior(fleet, res.scaler)
    assert cal.scoring.shift.prior != own.scoring.shift.prior
    assert cal.scoring.difference.prior != own.scoring.difference.prior


def test_the_training_report_names_the_historys_outliers_for_the_operator() -> None:
    from training.report import _budget_lines

    rep = {
        "budget_per_10k": 0.5,
        "streams": 8,
        "readings": 3200,
        "warmup": 10,
        "thresholds": {"error": 17.0},
        "incidents_per_10k": 9.4,
        "by_rule": {"error": 3},
        "cold_incidents_per_10k": 9.4,
        "outliers": [{"stream_id": "valve1_1", "ts_ms": 1583750246000, "rules": {"error": 137.4}}],
        "outliers_total": 1,
        "over_budget": True,
    }

    def text() -> str:
        return "\n".join(_budget_lines({"metrics": {"calibration": {"budget_report": rep}}}))

    assert "valve1_1 at 2020-03-09T10:37:26.000Z: error 137.4" in text()
    assert "check the training data" in text() and "more than four times the budget" in text()
    rep["outliers_total"] = 30  # more than the manifest lists
    assert "held 30 event(s) far beyond the rest of its tail (the first 1 listed)" in text()
    for key in ("outliers", "outliers_total", "over_budget"):  # a manifest from before them
        del rep[key]
    assert "check the training data" not in text() and "four times" not in text()
