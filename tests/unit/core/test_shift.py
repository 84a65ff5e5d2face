"""The shift rule: a channel's level against the stream's other channels."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from detector.core.engine import Engine
from detector.core.incidents import RULE_NAMES
from detector.core.scoring import ScoringConfig, build_rules
from detector.core.shift import (
    CHOLESKY_FROM,
    FLOOR,
    PRIOR_WEIGHT,
    RIDGE,
    ShiftConfig,
    ShiftState,
    shift_step,
    standardised_residuals,
)
from tests.unit.factories import make_bundle

SHIFT_BIT = 1 << RULE_NAMES.index("shift")


def _machine(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) a machine whose channels follow one wandering load (gains 3, -2, 1) plus noise."""
    rng = np.random.default_rng(seed)
    load = np.zeros(n)
    for t in range(1, n):  # AR(1) wander around a daily-like cycle
        load[t] = 0.98 * load[t - 1] + rng.normal(0, 0.1)
    load += np.sin(np.arange(n) * 2 * math.pi / 300)
    gains = np.array([3.0, -2.0, 1.0])
    return (load[:, None] * gains + rng.normal(0, 1.0, (n, 3))).astype(np.float32)


def _walk(x: np.ndarray, cfg: ShiftConfig) -> np.ndarray:
    """max_f |z_f| per reading of one stream, from a cold state."""
    f = x.shape[1]
    st = ShiftState(
        torch.zeros(1, f),
        torch.zeros(1, f),
        torch.zeros(1, f, f),
        torch.zeros(1, f),
        torch.zeros(1),
    )
    prior = torch.tensor(cfg.prior)
    out = []
    for row in torch.from_numpy(x):
        v = row.unsqueeze(0)
        st, z = shift_step(st, v, ~torch.isnan(v), torch.zeros(1, dtype=torch.bool), cfg, prior)
        out.append(float(z.abs().max()))
    return np.array(out)


CFG = ShiftConfig(prior=(1.0, 1.0, 1.0), threshold=5.0)


def test_a_channel_leaving_the_others_scores_while_a_shared_load_change_does_not() -> None:
    x = _machine(1500)
    x[1000:] += np.array([3.0, -2.0, 1.0]) * 2  # the load jumps: every channel as it follows
    shifted = x.copy()
    shifted[1200:1240, 1] += 5.0  # one channel steps 5 noise σ away for 40 readings
    clean, bad = _walk(x, CFG), _walk(shifted, CFG)
    assert clean[CFG.slow :].max() < 0.7 * CFG.threshold  # the shared jump included
    assert bad[1200:1215].max() >= 1.2 * CFG.threshold  # seen within a few readings
    assert bad[1400:].max() < 0.7 * CFG.threshold  # and forgotten after


def test_missing_values_move_nothing_and_a_late_channel_starts_at_its_own_level() -> None:
    x = _machine(800, seed=1) + 1000.0  # far from the scaler's mean: a late start must not lag
    x[:50, 2] = np.nan  # channel 2 says nothing at first
    x[400:420, 0] = np.nan
    z = _walk(x, CFG)
    assert np.isfinite(z).all()
    assert z[CFG.slow :].max() < CFG.threshold


def test_config_round_trips_and_the_rule_needs_two_to_64_calibrated_features() -> None:
    cfg = ScoringConfig(shift=CFG)
    assert ScoringConfig.from_dict(cfg.to_dict()) == cfg
    cpu = torch.device("cpu")
    assert "shift" in [r.name for r in build_rules(cfg, 3, cpu)]
    assert "shift" not in [r.name for r in build_rules(cfg, 2, cpu)]  # prior of another model
    one = ScoringConfig(shift=ShiftConfig(prior=(1.0,), threshold=6.0))
    assert "shift" not in [r.name for r in build_rules(one, 1, cpu)]
    assert "shift" not in [r.name for r in build_rules(ScoringConfig(shift=ShiftConfig()), 3, cpu)]
    with pytest.raises(ValueError, match=r"shift\.slow > shift\.fast"):
        ShiftConfig(fast=10, slow=10)


def test_the_engine_opens_one_shift_incident_for_a_stepped_channel() -> None:
    scoring = ScoringConfig(threshold=math.inf, protect_state=False, warmup=10, shift=CFG)
    engine = Engine(make_bundle(features=3, scoring=scoring, periods_s=()), max_streams=4)
    x = _machine(1400, seed=2)
    x[1100:1150, 0] -= 6.0
    ts = 1_700_000_000_000 + 60_000 * np.arange(len(x), dtype=np.int64)
    opened, shift_flags = [], 0
    for k in range(0, len(x), 100):  # waves of 100 readings of one stream, one at a time
        for j in range(k, min(k + 100, len(x))):
            res = engine.process(["m1"], ts[j : j + 1], x[j : j + 1], now_ms=int(ts[j]))
            if res.anomalous[0]:
                opened.append(j)
            shift_flags += int(res.rules[0]) & SHIFT_BIT != 0
    assert len(opened) == 1 and 1100 <= opened[0] < 1150, opened
    assert shift_flags >= 30  # the incident is the shift rule's, extended while it lasts


def test_an_old_stream_judges_a_step_as_a_young_one_does() -> None:
    # Calibration sees streams under 2,000 readings old; a live stream runs for months. A
    # covariance that forgot its prior judged an old, quiet stream's small move as a huge
    # one (session 10: 3x the false incidents asked for, in streams past 5,000 readings).
    rng = np.random.default_rng(3)

    def step_score(quiet: int) -> float:
        x = rng.normal(0, 0.05, (quiet + 30, 3)).astype(np.float32)  # a quiet stream
        x[quiet:, 0] += 1.0  # then one channel moves one prior σ
        return float(_walk(x, CFG)[quiet:].max())

    young, old = step_score(600), step_score(8000)
    assert old < 1.2 * young, (young, old)


def test_a_scaled_channel_is_flagged_at_its_own_multiple_of_the_threshold() -> None:
    cfg = replace(CFG, scale=(1.0, 2.0, 1.0))
    assert cfg.scaled and not CFG.scaled
    assert cfg.limits().tolist() == [5.0, 10.0, 5.0]
    assert ShiftConfig.from_dict(cfg.to_dict()) == cfg
    assert "scale" not in CFG.to_dict()  # an unscaled rule writes what older readers know
    with pytest.raises(ValueError, match=r"shift\.scale has 2 values but shift\.prior 3"):
        replace(CFG, scale=(1.0, 2.0))
    with pytest.raises(ValueError, match=r"positive shift\.prior and shift\.scale"):
        replace(CFG, scale=(1.0, 0.0, 1.0))
    # A step in channel 0 that the unscaled rule flags is not flagged once channel 0's scale
    # (and the others', which the step moves too) lifts its limit past the step's |z|.
    x = _machine(1400, seed=2)
    x[1100:1150, 0] -= 6.0
    peak = float(_walk(x, CFG)[1100:1150].max())
    assert peak >= CFG.threshold
    for scale, flagged in (((1.0, 1.0, 1.0), True), ((peak / 4.0,) * 3, False)):
        scoring = ScoringConfig(
            threshold=math.inf, protect_state=False, warmup=10, shift=replace(CFG, scale=scale)
        )
        engine = Engine(make_bundle(features=3, scoring=scoring, periods_s=()), max_streams=1)
        ts = 1_700_000_000_000 + 60_000 * np.arange(len(x), dtype=np.int64)
        hits = 0
        for j in range(len(x)):
            res = engine.process(["m1"], ts[j : j + 1], x[j : j + 1], now_ms=int(ts[j]))
            hits += int(res.rules[0]) & SHIFT_BIT != 0
        assert (hits > 0) is flagged, (scale, hits)


@pytest.mark.parametrize("f", [2, CHOLESKY_FROM - 1, CHOLESKY_FROM, 16])
def test_the_statistic_is_the_regression_residual_whichever_way_it_is_solved(f: int) -> None:
    """Small models invert the pooled covariance, wide ones solve through its Cholesky
    factor (faster there): both give (P d)_f / sqrt(P_ff) of a float64 reference."""
    gen = torch.Generator().manual_seed(f)
    x = torch.randn(64, f, 3 * f, generator=gen)
    cov = x @ x.transpose(1, 2) / (3 * f)
    d = torch.randn(64, f, generator=gen)
    weight = torch.full((64,), 200.0)
    prior = torch.rand(f, generator=gen) + 0.5
    z = standardised_residuals(cov, weight, d, prior)
    share = 200.0 / (200.0 + PRIOR_WEIGHT)
    diag = share * torch.diagonal(cov, dim1=1, dim2=2) + (1 - share) * prior
    pooled = share * cov + torch.diag_embed((1 - share) * prior + RIDGE * diag + FLOOR * prior)
    p = torch.linalg.inv(pooled.double())
    ref = (p @ d.double().unsqueeze(2)).squeeze(2) / torch.diagonal(p, dim1=1, dim2=2).sqrt()
    torch.testing.assert_close(z.double(), ref, rtol=1e-4, atol=1e-4)
