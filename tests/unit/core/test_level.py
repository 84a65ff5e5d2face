"""The level rule: a channel's level given the others, against its own course in time."""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from detector.core.engine import Engine
from detector.core.incidents import OPEN, RULE_NAMES, RULES
from detector.core.level import (
    AR_WARM,
    MAX_PHI,
    OWN_CLIP,
    OWN_PRIOR,
    SPANS,
    LevelConfig,
    LevelState,
    level_step,
)
from detector.core.rules import Wave
from detector.core.scoring import Scaler, ScoringConfig, build_rules
from detector.core.shift import FLOOR, PRIOR_WEIGHT, RIDGE
from detector.core.statsrow import LAYOUT
from tests.unit.factories import clean_series, make_bundle
from training.calibrate import run_engine
from training.data import StreamSeries
from training.levelcal import level_prior, level_statistic

LEVEL_BIT = 1 << RULE_NAMES.index("level")


def _machine(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) channels that follow one wandering load (gains 3, -2, 1), each with its own
    red noise (AR(1), phi 0.9): a conditional level that wanders of its own."""
    rng = np.random.default_rng(seed)
    load, noise = np.zeros(n), np.zeros((n, 3))
    for t in range(1, n):
        load[t] = 0.98 * load[t - 1] + rng.normal(0, 0.1)
        noise[t] = 0.9 * noise[t - 1] + rng.normal(0, 0.3, 3)
    load += np.sin(np.arange(n) * 2 * math.pi / 300)
    return (load[:, None] * np.array([3.0, -2.0, 1.0]) + noise).astype(np.float32)


def _reference(x: np.ndarray, cfg: LevelConfig) -> np.ndarray:
    """The statistic per reading, span and channel of one stream (T, S F; nan = missing),
    written plainly from the module's description, reading by reading."""
    t_n, f = x.shape
    prior = np.asarray(cfg.prior)
    ref, cov, taken = np.zeros(f), np.zeros((f, f)), np.zeros(f)
    prev, sxy, sxx, see = np.zeros(f), np.zeros(f), np.zeros(f), np.zeros(f)
    bank = np.zeros((len(SPANS), f))
    own_n, own_ms = np.zeros((len(SPANS), f)), np.zeros((len(SPANS), f))
    am = 2 / (cfg.memory + 1)
    out = np.zeros((t_n, len(SPANS) * f))
    for t in range(t_n):
        obs = ~np.isnan(x[t])
        use = obs & (taken > 0)
        r = np.where(use, np.nan_to_num(x[t]) - ref, 0.0)
        ref = np.where(obs & (taken == 0), np.nan_to_num(x[t]), ref + 2 / (cfg.slow + 1) * r)
        both = np.minimum.outer(taken, taken)  # a pair learns when both gave a value
        rate = np.maximum(1 / np.maximum(both, 1), am)
        cov = np.where(np.outer(use, use), cov + rate * (np.outer(r, r) - cov), cov)
        share = min(t + 1, (cfg.memory + 1) / 2)
        share /= share + PRIOR_WEIGHT
        diag = share * np.diag(cov) + (1 - share) * prior
        pooled = share * cov + np.diag((1 - share) * prior + RIDGE * diag + FLOOR * prior)
        p = np.linalg.inv(pooled)
        c = np.where(use, p @ r / np.sqrt(np.diag(p)), 0.0)
        a = np.where(use, np.maximum(1 / np.maximum(taken, 1), am), 0.0)
        sxy += a * (c * prev - sxy)
        sxx += a * (prev * prev - sxx)
        phi = np.where(taken > AR_WARM, np.clip(sxy / np.maximum(sxx, 1e-9), 0, MAX_PHI), 0)
        eta = np.where(use, c - phi * prev, 0.0)
        see += a * (eta * eta - see)
        e = eta / np.sqrt(np.maximum(see, 1e-9))
        for k, span in enumerate(SPANS):
            rate = 2 / (span + 1)
            bank[k] += rate * (e - bank[k])
            raw = np.abs(bank[k]) / math.sqrt(rate / (2 - rate))
            spread = np.sqrt((OWN_PRIOR + own_n[k] * own_ms[k]) / (OWN_PRIOR + own_n[k]))
            judged = use & (taken >= cfg.slow)  # a channel's own values, from slow of them
            out[t, k * f : (k + 1) * f] = np.where(judged, raw / spread, 0.0)
            counted = judged & (t >= cfg.slow)  # the stream judged from slow readings on
            own_n[k] = np.where(counted, np.minimum(own_n[k] + 1, cfg.memory), own_n[k])
            v = np.minimum(raw, OWN_CLIP * spread)
            own_ms[k] += np.where(counted, (v * v - own_ms[k]) / np.maximum(own_n[k], 1), 0)
        prev = np.where(use, c, prev)
        taken += obs
    return out


def _walk(x: np.ndarray, cfg: LevelConfig) -> np.ndarray:
    """The statistic per reading, span and channel of one stream (T, S F), by level_step."""
    f = x.shape[1]
    w, z = len(SPANS) * f, torch.zeros
    st = LevelState(z(1, f), z(1, f, f), z(1, f), z(1, 4 * f), z(1, w), z(1, 2 * w), z(1))
    prior, spread, out = torch.tensor(cfg.prior), torch.ones(w), []
    still = torch.zeros(1, dtype=torch.bool)
    for row in torch.from_numpy(x):
        v, ready = row.unsqueeze(0), st.seen >= cfg.slow
        st, s = level_step(st, v, ~torch.isnan(v), still, ready, cfg, prior, spread)
        out.append(s[0].numpy())
    return np.array(out)


CFG = LevelConfig(prior=(4.0, 2.0, 0.5), threshold=6.0)


def test_the_statistic_is_the_whitened_conditional_level_as_described() -> None:
    x = _machine(700)
    x[300:, 1] += 1.0
    x[np.random.default_rng(1).random(x.shape) < 0.05] = np.nan  # missing cells say nothing
    np.testing.assert_allclose(_walk(x, CFG), _reference(x, CFG), rtol=2e-3, atol=2e-3)


def test_a_small_step_on_one_channel_is_caught_while_a_shared_load_change_is_not() -> None:
    """A step of 5 sd of a channel's red noise (17 of its innovations, 8 of its
    conditional level's, which carries the others' noise): new in the channel's course."""
    x = _machine(2000)
    x[1200:] += np.array([3.0, -2.0, 1.0]) * 1.5  # the load jumps: every channel follows
    stepped = x.copy()
    stepped[1500:, 1] += 5 * 0.3 / math.sqrt(1 - 0.81)
    clean, bad = _walk(x, CFG).max(axis=1), _walk(stepped, CFG).max(axis=1)
    assert clean[CFG.slow :].max() < 0.7 * CFG.threshold  # the shared jump included
    assert bad[1500:1505].max() >= 1.3 * CFG.threshold  # seen at once


def test_config_round_trips_and_the_rule_needs_two_to_64_calibrated_features() -> None:
    cfg = ScoringConfig(level=LevelConfig(prior=(1.0, 2.0), threshold=6.0))
    assert ScoringConfig.from_dict(cfg.to_dict()) == cfg
    cpu = torch.device("cpu")
    assert "level" in [r.name for r in build_rules(cfg, 2, cpu)]
    assert "level" not in [r.name for r in build_rules(cfg, 3, cpu)]  # another model
    assert "level" not in [r.name for r in build_rules(ScoringConfig(level=LevelConfig()), 2, cpu)]
    old = {k: v for k, v in cfg.to_dict().items() if k != "level"}  # a manifest before it
    assert ScoringConfig.from_dict(old).level is None
    for bad in ((1.0, 0.0), (1.0, float("inf"))):
        with pytest.raises(ValueError, match=r"positive, finite level\.prior"):
            LevelConfig(prior=bad)
    scaled = LevelConfig(prior=(1.0, 2.0), threshold=6.0, scale=(1.0, 2.0) * len(SPANS))
    assert LevelConfig.from_dict(scaled.to_dict()) == scaled
    assert scaled.limits().tolist() == [6.0, 12.0] * len(SPANS)
    assert "scale" not in LevelConfig(prior=(1.0, 1.0)).to_dict()
    with pytest.raises(ValueError, match=r"level\.scale has 2 values; 4 per feature"):
        LevelConfig(prior=(1.0, 1.0), scale=(1.0, 2.0))


def _stepped(seed: int) -> list[StreamSeries]:
    series = clean_series(4, 900, seed=seed)
    for s, at in zip(series, (500, 600, 650, 700), strict=True):
        s.values[at:, 0] += 4.0 * s.values[:at, 0].std()  # a level shift that stays
    return series


def test_the_engine_flags_a_step_the_trainer_calibrates_on_the_same_statistic() -> None:
    series = _stepped(3)
    b = make_bundle(features=2)
    prior = level_prior(series, b.scaler, LevelConfig())
    assert prior is not None and len(prior) == 2
    lc = LevelConfig(prior=prior, threshold=6.0)
    cfg = ScoringConfig(threshold=float("inf"), warmup=10, protect_max=0, level=lc)
    run = run_engine(b.module, b.scaler, b.features, series, cfg)  # collected after warm-up
    live = (run.rules & LEVEL_BIT) != 0
    z = level_statistic(series, b.scaler, lc, warmup=10)
    offline = np.concatenate([zs[10:] for zs in z]) >= 6.0
    assert np.array_equal(live, offline)
    for k, at in enumerate((500, 600, 650, 700)):  # each step, within ten readings
        assert live[(run.stream == k) & (run.index >= at) & (run.index < at + 10)].any()
    assert not live[run.index < 500].any()


def test_another_rules_run_holds_the_rule_still_its_own_flags_do_not() -> None:
    """Inside a run another rule opened, the reference does not follow the step (its onset
    is taken in whole); once this rule flagged in the open incident, it learns again: held
    on its own flags, it kept a slow clean wander it caught flagged for as long as the run."""
    f, streams = 2, 4
    cfg = ScoringConfig(level=LevelConfig(prior=(1.0, 1.0), threshold=6.0))
    (level,) = [r for r in build_rules(cfg, f, torch.device("cpu")) if r.name == "level"]
    row = LAYOUT.split(torch.zeros(streams, LAYOUT.width(f)), f)
    others = float(1 << RULE_NAMES.index("shift"))
    incident = torch.zeros_like(row.incident)
    incident[:, OPEN] = torch.tensor([0.0, 1.0, 1.0, 1.0])
    incident[:, RULES] = torch.tensor([0.0, others, others + LEVEL_BIT, others + LEVEL_BIT])
    row = replace(
        row,
        run=torch.tensor([0.0, 5.0, 5.0, 0.0]),
        age=torch.full((streams,), 900.0),
        level_taken=torch.full((streams, f), 500.0),
        incident=incident,
    )
    x = torch.ones(streams, f)
    observed = torch.ones(streams, f, dtype=torch.bool)
    verdict = level.step(Wave(x, None, x, x[:, 0], observed, row))
    learnt = (verdict.state["level_ref"] != 0).all(dim=1).tolist()
    # no run; a run of the shift rule's; the same run after this rule flagged in it; an
    # incident this rule flagged that is open, the stream back to normal readings
    assert learnt == [True, False, True, True]
    # Incidents off: no record of its own flags, so it never holds (a stale block ignored).
    off = ScoringConfig(level=LevelConfig(prior=(1.0, 1.0), threshold=6.0), incidents=None)
    (level,) = [r for r in build_rules(off, f, torch.device("cpu")) if r.name == "level"]
    verdict = level.step(Wave(x, None, x, x[:, 0], observed, row))
    assert (verdict.state["level_ref"] != 0).all().item()


def test_a_step_the_rule_alone_flags_is_not_held_flagged_by_its_own_flags() -> None:
    """Through the engine (the incident written by one reading, read at the next): a step
    only this rule sees is flagged for as long whether runs hold the rule or not."""
    series = _stepped(4)
    b = make_bundle(features=2)
    prior = level_prior(series, b.scaler, LevelConfig())
    assert prior is not None
    flagged = {}
    for protect in (0, 30):
        lc = LevelConfig(prior=prior, threshold=6.0)
        cfg = ScoringConfig(threshold=float("inf"), warmup=10, protect_max=protect, level=lc)
        run = run_engine(b.module, b.scaler, b.features, series, cfg)
        flagged[protect] = int(((run.rules & LEVEL_BIT) != 0).sum())
    assert flagged[30] == flagged[0] > 0, flagged


def test_too_short_a_history_leaves_the_rule_off_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    short = [StreamSeries("s", np.arange(8, dtype=np.int64), np.zeros((8, 2), np.float32))]
    with caplog.at_level(logging.WARNING):
        assert level_prior(short, Scaler((0.0, 0.0), (1.0, 1.0)), LevelConfig()) is None
    assert "level rule off in this model: no calibration stream has 400 readings" in caplog.text


def test_a_new_models_scaler_does_not_read_as_a_jump_on_every_stream() -> None:
    """A retrained model keeps the streams' state, but its scaler moves the units the
    reference and the covariance were kept in: they are converted."""
    streams, f = 20, 2
    scoring = ScoringConfig(
        threshold=float("inf"), warmup=10, level=LevelConfig(prior=(0.3, 0.3), threshold=6.0)
    )
    first = make_bundle(features=f, scoring=scoring, scaler=Scaler((0.0, 0.0), (1.0, 1.0)))
    moved = make_bundle(
        features=f, scoring=scoring, version=2, scaler=Scaler((2.0, -1.0), (3.0, 0.5))
    )
    engine = Engine(first, max_streams=streams)
    ids = [f"s{i}" for i in range(streams)]
    rng = np.random.default_rng(0)

    def step(t: int, jump: float = 0.0) -> np.ndarray:
        v = np.sin(t / 50 + np.arange(streams))[:, None] + rng.normal(0, 0.3, (streams, f))
        v[0, 0] += jump
        ts = np.full(streams, 1_795_219_200_000 + 60_000 * t)
        res = engine.process(ids, ts, v.astype(np.float32), now_ms=0)
        return (res.rules & LEVEL_BIT) != 0

    assert sum(int(step(t).sum()) for t in range(600)) <= 2
    assert engine.swap(moved)  # the state is kept
    assert not any(step(t).any() for t in range(600, 640))
    assert any(step(t, jump=3.0)[0] for t in range(640, 650))  # and it judges in the new units


def test_a_sparse_channel_learns_its_own_variance_not_its_missing_values() -> None:
    """A channel giving one reading in thirty: its variance, and how it moves with the
    others, as from every reading (a missing value's r of 0 would teach it a fraction)."""
    full = _machine(6000, seed=2)
    sparse = full.copy()
    sparse[np.arange(len(full)) % 30 != 0, 0] = np.nan
    covs = []
    for x in (full, sparse):
        f = x.shape[1]
        w, z = len(SPANS) * f, torch.zeros
        st = LevelState(z(1, f), z(1, f, f), z(1, f), z(1, 4 * f), z(1, w), z(1, 2 * w), z(1))
        still, ready = torch.zeros(1, dtype=torch.bool), torch.ones(1, dtype=torch.bool)
        prior, spread = torch.tensor(CFG.prior), torch.ones(w)
        for row in torch.from_numpy(x):
            v = row.unsqueeze(0)
            st, _ = level_step(st, v, ~torch.isnan(v), still, ready, CFG, prior, spread)
        covs.append(st.cov[0].numpy())
    want, got = covs
    assert got[0, 0] == pytest.approx(want[0, 0], rel=0.5)
    assert got[0, 1] / got[1, 1] == pytest.approx(want[0, 1] / want[1, 1], rel=0.5)
