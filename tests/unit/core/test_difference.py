"""The difference rule: a channel's change far beyond its stream's usual ones."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from detector.core.difference import (
    CLIP,
    PRIOR,
    SHORT,
    DifferenceConfig,
    DifferenceState,
    difference_step,
)
from detector.core.engine import Engine
from detector.core.incidents import RULE_NAMES
from detector.core.scoring import Scaler, ScoringConfig, build_rules
from tests.unit.factories import clean_series, make_bundle
from training.calibrate import run_engine
from training.data import StreamSeries
from training.diffcal import difference_prior, difference_statistic

DIFF_BIT = 1 << RULE_NAMES.index("difference")


def _reference(x: np.ndarray, prior: np.ndarray, memory: int) -> np.ndarray:
    """The statistic of one stream (T, F, nan = missing) written plainly, reading by reading."""
    t_n, f = x.shape
    filled = x.copy()
    for t in range(1, t_n):
        filled[t] = np.where(np.isnan(filled[t]), filled[t - 1], filled[t])
    n, ms, out = np.zeros(2 * f), np.zeros(2 * f), np.zeros(t_n)
    given = ~np.isnan(x)
    for t in range(t_n):
        obs = given[t]
        d = filled[t] - filled[t - 1] if t >= 1 else np.zeros(f)
        m = (filled[t] - filled[t - SHORT]) / SHORT if t >= SHORT else np.zeros(f)
        # judged over readings the channel gave: the one before for d, the last SHORT for m
        before = [given[t - k] if t >= k else np.zeros(f, bool) for k in range(1, SHORT + 1)]
        ok = np.r_[obs & before[0], obs & np.all(before, axis=0)]
        a = np.abs(np.nan_to_num(np.r_[d, m]))
        spread = np.sqrt((PRIOR * prior**2 + n * ms) / (PRIOR + n))
        out[t] = np.where(ok, a / spread, 0.0).max()
        n = np.where(ok, np.minimum(n + 1, memory), n)  # each change's own count
        v = np.minimum(a, CLIP * spread)
        ms = np.where(ok, ms + (v * v - ms) / np.maximum(n, 1), ms)
    return out


def _walk(x: np.ndarray, prior: np.ndarray, memory: int) -> np.ndarray:
    f = x.shape[1]
    st = DifferenceState(
        torch.zeros(1, SHORT * f), torch.zeros(1, f), torch.zeros(1, 2 * f), torch.zeros(1, 2 * f)
    )
    p, out = torch.tensor(prior, dtype=torch.float32), []
    for row in x:
        xt = torch.tensor(row[None], dtype=torch.float32)
        st, z = difference_step(st, xt, ~torch.isnan(xt), p, memory)
        out.append(float(z[0].max()))
    return np.array(out)


def test_the_statistic_is_each_change_in_the_streams_own_spread_of_it() -> None:
    rng = np.random.default_rng(0)
    full = np.cumsum(rng.normal(size=(300, 3)), axis=0) * [1.0, 0.2, 5.0]
    full[150:, 1] += 4.0  # a level shift
    x = np.where(rng.random(full.shape) < 0.1, np.nan, full)
    x[:7, 2] = np.nan  # a channel that starts late
    x[149:151, 1] = full[149:151, 1]  # the shift's step given (the missing are at random)
    prior = np.array([1.0, 0.5, 2.0, 0.4, 0.2, 1.0])
    got, want = _walk(x, prior, memory=50), _reference(x, prior, memory=50)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert got.max() > 8 and np.argmax(got) == 150  # 4 units against a spread of ~0.3


def test_a_change_across_a_missing_value_is_judged_by_nobody() -> None:
    """Over a gap a change spans two readings or more: not a one-step change (a probe
    fleet's only false incidents of the rule were such changes; docs/quality.md)."""
    nan = float("nan")
    x = np.array([[0.0], [1.0], [nan], [9.0], [9.5], [9.5]])
    z = _walk(x, np.array([1.0, 1.0]), memory=10)
    assert z[0] == 0 and z[2] == 0  # nothing before, nothing given
    assert z[3] == 0  # 9 - 1 across the gap
    # the next one-step change is judged, against the prior and the one change seen (1)
    assert z[4] == pytest.approx(0.5)


def test_config_round_trips_and_an_uncalibrated_rule_is_off() -> None:
    cfg = ScoringConfig(difference=DifferenceConfig(prior=(1.0, 2.0, 0.5, 0.5), threshold=7.0))
    assert ScoringConfig.from_dict(cfg.to_dict()) == cfg
    cpu = torch.device("cpu")
    assert "difference" in [r.name for r in build_rules(cfg, 2, cpu)]
    assert "difference" not in [r.name for r in build_rules(cfg, 3, cpu)]  # another model
    assert "difference" not in [
        r.name for r in build_rules(ScoringConfig(difference=DifferenceConfig()), 2, cpu)
    ]
    old = {k: v for k, v in cfg.to_dict().items() if k != "difference"}  # a manifest before it
    assert ScoringConfig.from_dict(old).difference is None
    with pytest.raises(ValueError, match=r"difference\.prior"):
        DifferenceConfig(prior=(1.0, 0.0))


def test_each_change_is_flagged_at_its_own_multiple_of_the_threshold() -> None:
    cfg = DifferenceConfig(prior=(1.0, 2.0, 0.5, 0.5), threshold=7.0, scale=(1.0, 3.0, 1.0, 2.0))
    assert cfg.scaled and cfg.limits().tolist() == [7.0, 21.0, 7.0, 14.0]
    assert DifferenceConfig.from_dict(cfg.to_dict()) == cfg
    assert "scale" not in DifferenceConfig(prior=(1.0, 1.0)).to_dict()  # as older readers know
    with pytest.raises(ValueError, match=r"difference\.scale has 2 values but difference\.prior 4"):
        DifferenceConfig(prior=(1.0,) * 4, scale=(1.0, 2.0))
    for bad in (0.0, float("inf")):
        with pytest.raises(ValueError, match=r"positive, finite difference\.scale"):
            DifferenceConfig(prior=(1.0, 1.0), scale=(1.0, bad))


def test_the_engine_flags_a_step_the_trainer_calibrates_on_the_same_statistic() -> None:
    series = clean_series(4, 400, seed=3)
    for s, at in zip(series, (60, 150, 200, 250), strict=True):
        s.values[at:, 0] += 12.0 * s.values[:at, 0].std()  # a level shift that stays
    b = make_bundle(features=2)
    prior = difference_prior(series, b.scaler)
    assert prior is not None and len(prior) == 4
    cfg = ScoringConfig(
        threshold=float("inf"), warmup=10, difference=DifferenceConfig(prior=prior, threshold=6.0)
    )
    run = run_engine(b.module, b.scaler, b.features, series, cfg)  # collected after warm-up
    live = (run.rules & DIFF_BIT) != 0
    z = difference_statistic(series, b.scaler, cfg.difference, warmup=10)
    offline = np.concatenate([zs[10:] for zs in z]) >= 6.0
    assert np.array_equal(live, offline)
    for k, at in enumerate((60, 150, 200, 250)):  # each step, where it happens
        assert live[(run.stream == k) & (run.index == at)].all()


def test_a_channels_scale_lifts_its_limit_live_as_in_calibration() -> None:
    """Channel 0's steps, flagged at scale 1, are not once its changes' scale lifts their
    limit past them; the engine and the trainer's statistic agree reading for reading."""
    series = clean_series(4, 400, seed=3)
    for s, at in zip(series, (60, 150, 200, 250), strict=True):
        s.values[at:, 0] += 12.0 * s.values[:at, 0].std()
    b = make_bundle(features=2)
    prior = difference_prior(series, b.scaler)
    assert prior is not None
    hits = {}
    for scale in ((1.0, 1.0, 1.0, 1.0), (50.0, 1.0, 50.0, 1.0)):
        dc = DifferenceConfig(prior=prior, threshold=6.0, scale=scale)
        cfg = ScoringConfig(threshold=float("inf"), warmup=10, difference=dc)
        run = run_engine(b.module, b.scaler, b.features, series, cfg)
        live = (run.rules & DIFF_BIT) != 0
        z = difference_statistic(series, b.scaler, dc, warmup=10)
        assert np.array_equal(live, np.concatenate([zs[10:] for zs in z]) >= 6.0)
        steps = np.zeros_like(live)
        for k, at in enumerate((60, 150, 200, 250)):
            steps |= (run.stream == k) & (run.index == at)
        hits[scale[0]] = int(live[steps].sum())
    assert hits == {1.0: 4, 50.0: 0}, hits


def test_too_short_a_history_leaves_the_rule_off_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    short = [StreamSeries("s", np.arange(8, dtype=np.int64), np.zeros((8, 2), np.float32))]
    with caplog.at_level(logging.WARNING):
        assert difference_prior(short, Scaler((0.0, 0.0), (1.0, 1.0))) is None
    assert "difference rule off in this model: no stream has 11 readings" in caplog.text


def test_a_new_models_scaler_does_not_read_as_a_jump_on_every_stream() -> None:
    """A retrained model keeps the streams' state (same shape), but its scaler moves the
    units the last values were kept in: the rule waits for values of the new units."""
    streams, f = 20, 2
    scoring = ScoringConfig(
        threshold=float("inf"),
        warmup=10,
        difference=DifferenceConfig(prior=(0.02, 0.02, 0.02, 0.02), threshold=6.0),
    )
    first = make_bundle(features=f, scoring=scoring, scaler=Scaler((0.0, 0.0), (1.0, 1.0)))
    moved = make_bundle(
        features=f, scoring=scoring, version=2, scaler=Scaler((0.14, -0.1), (1.14, 0.9))
    )
    engine = Engine(first, max_streams=streams)
    ids = [f"s{i}" for i in range(streams)]
    rng = np.random.default_rng(0)

    def step(t: int, jump: float = 0.0) -> np.ndarray:
        v = np.sin(t / 50 + np.arange(streams))[:, None] + rng.normal(0, 0.005, (streams, f))
        v[0, 0] += jump
        ts = np.full(streams, 1_795_219_200_000 + 60_000 * t)
        res = engine.process(ids, ts, v.astype(np.float32), now_ms=0)
        return (res.rules & DIFF_BIT) != 0

    assert not any(step(t).any() for t in range(300))
    assert engine.swap(moved)  # the state is kept
    assert not any(step(t).any() for t in range(300, 310))
    assert step(310, jump=1.0)[0]  # and it judges again in the new units
