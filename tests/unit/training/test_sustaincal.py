"""The sustained rule judged against each stream's own spread: what it changes, and the
trainer computing exactly what the engine decides."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from detector.core.incidents import RULE_NAMES
from detector.core.rules import SUSTAIN_HOLD, SustainConfig, SustainRule, Wave
from detector.core.scoring import ScoringConfig
from detector.core.statsrow import LAYOUT
from detector.sandbox.simulation import FleetSpec
from training.calibrate import calibrate_detail, run_engine
from training.data import from_simulation
from training.fit import FitConfig, fit
from training.sustaincal import sustained_statistic

SPAN, SCALE, THRESHOLD = 10, 0.3, 5.0
SUSTAINED = 1 << RULE_NAMES.index("sustained")


def _fires(own: bool, bias: float, step_at: int | None, n: int = 3000) -> list[int]:
    """Readings at which SustainRule flags a stream whose errors are N(bias, 0.75) plus 3 from
    ``step_at`` on; the rule's statistics carried from reading to reading as the engine
    carries them (no other rule: every reading counts as calm unless flagged)."""
    rule = SustainRule(SustainConfig(SPAN, (SCALE,), THRESHOLD, own), 0, torch.device("cpu"))
    rng = np.random.default_rng(0)
    row = LAYOUT.split(torch.zeros(1, LAYOUT.width(1)), 1)
    fired = []
    for k in range(n):
        e = torch.tensor(
            [[bias + rng.standard_normal() * 0.75 + (3.0 if step_at and k >= step_at else 0.0)]]
        )
        v = rule.step(Wave(e, None, e, e.abs()[:, 0], torch.ones(1, 1, dtype=torch.bool), row))
        hit = bool(v.flags[0])
        fired += [k] if hit else []
        calm = torch.zeros(1) if hit else row.calm + 1
        run = row.run + 1 if hit else torch.zeros(1)
        row = replace(row, age=row.age + 1, calm=calm, run=run, **v.state)
    return fired


def test_a_stream_that_always_errs_one_way_stops_firing_once_it_knows_its_spread() -> None:
    # Errors N(1.3, 0.75): the average sits at 1.3 (4.3 fleet scales) and often passes 5.
    fleet = _fires(own=False, bias=1.3, step_at=None)
    own = _fires(own=True, bias=1.3, step_at=None)
    assert sum(k >= 1000 for k in fleet) > 50  # for good: a page every few hundred readings
    assert not [k for k in own if k >= 1000]  # its own spread has learnt the bias
    # A quiet stream's step of 3 error units is still seen, with its own spread as with the
    # fleet's, and as soon.
    quiet_fleet = _fires(own=False, bias=0.0, step_at=2000)
    quiet_own = _fires(own=True, bias=0.0, step_at=2000)
    assert not [k for k in quiet_own if k < 2000]
    assert quiet_own and quiet_own[0] <= quiet_fleet[0] < 2000 + SPAN


def test_the_trainer_computes_what_the_engine_flags_with_each_streams_own_spread() -> None:
    """sustained_statistic (the trainer's) against the engine's flags, reading by reading,
    with anomalies in the data so that averages are winsorised and the hold applies."""
    clean = from_simulation(FleetSpec(streams=4, anomaly_rate=0.0, seed=3), 240)
    tiny = FitConfig(hidden=8, layers=1, window=16, batch_size=4, epochs=2, device="cpu", threads=1)
    res = fit(clean, FleetSpec().features, tiny)
    base = ScoringConfig(sustained=SustainConfig(8, own=True))
    cal = calibrate_detail(
        res.module, res.scaler, FleetSpec().features, clean, base, alarm_rate=1e-3
    )
    assert cal.scoring.sustained is not None and cal.scoring.sustained.own
    sus = replace(cal.scoring.sustained, threshold=2.5)  # low: it fires and winsorises
    scoring = replace(
        cal.scoring, threshold=math.inf, protect_state=False, peak=None, shift=None,
        flatline=None, incidents=None, sustained=sus,
    )  # fmt: skip
    series = from_simulation(FleetSpec(streams=4, anomaly_rate=20.0, seed=4), 600)
    w = scoring.warmup
    run = run_engine(
        res.module, res.scaler, FleetSpec().features, series, scoring, collect_from=[w] * 4
    )
    z = sustained_statistic(run, sus)
    over = z >= sus.threshold
    expect = np.zeros(len(z), bool)
    for s in np.unique(run.stream):  # the engine's hold: no new run within 3 spans of one
        calm, streak = w, 0
        for i in np.flatnonzero(run.stream == s):
            hit = over[i] and (calm >= SUSTAIN_HOLD * sus.span or streak > 0)
            expect[i] = hit
            calm, streak = (0, streak + 1) if hit else (calm + 1, 0)
    flagged = run.rules & SUSTAINED != 0
    assert expect.sum() >= 10
    np.testing.assert_array_equal(flagged, expect)
    # The stream's own spread did decide: the fleet's alone gives other verdicts.
    fleet = sustained_statistic(run, replace(sus, own=False))
    assert (over != (fleet >= sus.threshold)).sum() > 0
