"""Scoring: masking, warm-up, threshold, likelihood, statistics."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from detector.core.scoring import (
    AGE,
    AVG,
    CALM,
    COUNT,
    QUIET,
    RUN,
    STAT_WIDTH,
    SUSTAIN_HOLD,
    ScoringConfig,
    feature_errors,
    likelihood_of,
    score_step,
    sustain_step,
)


def _warm_stats(n: int, age: int = 100) -> torch.Tensor:
    s = torch.zeros(n, STAT_WIDTH)
    s[:, AGE] = age
    return s


def test_missing_features_are_masked_out_of_the_error() -> None:
    x = torch.tensor([[1.0, float("nan"), 3.0]])
    x_hat = torch.tensor([[0.0, 100.0, 3.0]])
    err, raw, observed = feature_errors(x, x_hat)
    assert err.tolist() == [[1.0, 0.0, 0.0]]
    assert math.isclose(raw.item(), math.sqrt(1.0 / 2), rel_tol=1e-6)  # RMS over the 2 observed
    assert observed.tolist() == [[True, False, True]]


def test_all_missing_reading_is_never_anomalous_and_teaches_nothing() -> None:
    x = torch.full((1, 2), float("nan"))
    err, raw, obs = feature_errors(x, torch.zeros(1, 2))
    stats = _warm_stats(1)
    s = score_step(err, raw, obs, stats, ScoringConfig(warmup=0))
    assert not s.anomalous.item()
    assert s.stats[0, COUNT].item() == 0


def test_threshold_warmup_and_likelihood() -> None:
    cfg = ScoringConfig(threshold=3.0, error_mean=1.0, error_std=0.5, warmup=5)
    raw = torch.tensor([1.0, 3.0, 3.0])  # z = 0, 4, 4
    err = raw.unsqueeze(1)
    obs = torch.ones(3, 1, dtype=torch.bool)
    stats = _warm_stats(3)
    stats[2, AGE] = 2  # still warming up
    s = score_step(err, raw, obs, stats, cfg)
    assert s.score.tolist() == [0.0, 4.0, 4.0]
    assert s.anomalous.tolist() == [False, True, False]
    assert s.likelihood.min().item() >= 0.0 and s.likelihood.max().item() <= 1.0
    assert math.isclose(s.likelihood[0].item(), 0.5, abs_tol=1e-6)
    assert s.likelihood[1].item() > 0.9999


def test_stream_statistics_adapt_to_a_noisy_stream() -> None:
    """A stream that is always noisier than the population stops alerting once learned."""
    cfg = ScoringConfig(
        threshold=4.0, error_mean=1.0, error_std=0.2, warmup=0, prior_weight=20, window=200
    )
    stats = _warm_stats(1)
    gen = torch.Generator().manual_seed(0)
    flags = []
    for _ in range(400):
        raw = 3.0 + 0.3 * torch.randn(1, generator=gen)
        s = score_step(raw.unsqueeze(1), raw, torch.ones(1, 1, dtype=torch.bool), stats, cfg)
        stats = s.stats
        flags.append(bool(s.anomalous.item()))
    assert any(flags[:5])  # judged against the population at first
    assert not any(flags[-200:])  # then against its own noise


def test_protect_runs_are_bounded_so_a_new_regime_is_accepted() -> None:
    cfg = ScoringConfig(threshold=2.0, warmup=0, protect_max=3, prior_weight=1e6)
    stats = _warm_stats(1)
    protected = []
    for _ in range(6):
        raw = torch.tensor([10.0])
        s = score_step(raw.unsqueeze(1), raw, torch.ones(1, 1, dtype=torch.bool), stats, cfg)
        stats = s.stats
        protected.append(bool(s.protect.item()))
    assert protected == [True, True, True, False, False, False]
    assert stats[0, RUN].item() == 6


def test_statistics_stay_finite_under_any_threshold() -> None:
    """An operator's threshold override (even negative: alert on everything) keeps scores finite."""
    cfg = ScoringConfig(threshold=-1e9, warmup=0)
    stats = _warm_stats(1)
    for _ in range(200):
        raw = torch.tensor([0.5])
        s = score_step(raw.unsqueeze(1), raw, torch.ones(1, 1, dtype=torch.bool), stats, cfg)
        stats = s.stats
        assert torch.isfinite(s.score).all() and s.anomalous.all()


def test_likelihood_keeps_ranking_far_into_the_tail_in_float32() -> None:
    z = torch.tensor([-2.0, 0.0, 2.0, 4.0, 6.0, 10.0, 11.0, 20.0, 40.0, 50.0])
    lik = likelihood_of(z)
    assert lik.dtype == torch.float32
    assert lik.min().item() >= 0.0 and lik.max().item() <= 1.0
    assert torch.all(lik[1:] > lik[:-1])  # strictly rising: alerts can be ranked
    body = 0.5 * (1 + torch.erf(z[:3] / math.sqrt(2)))
    torch.testing.assert_close(lik[:3], body)  # the normal CDF while the tail is >= 1e-4


def test_cooldown_alerts_once_per_incident_but_still_protects() -> None:
    cfg = ScoringConfig(threshold=3.0, error_mean=1.0, error_std=0.5, warmup=0, cooldown=3)
    stats = _warm_stats(1)
    alerts, protects = [], []
    for r in [3.0] * 5 + [1.0] + [3.0]:  # z = 4 five times, a normal reading, z = 4 again
        raw = torch.tensor([r])
        s = score_step(raw.unsqueeze(1), raw, torch.ones(1, 1, dtype=torch.bool), stats, cfg)
        alerts.append(bool(s.anomalous.item()))
        protects.append(bool(s.protect.item()))
        stats = s.stats
    assert alerts == [True, False, False, False, True, False, False]
    assert protects == [True] * 5 + [False, True]
    assert stats[0, QUIET].item() == 1


def test_average_scores_a_run_of_errors_above_a_single_spike() -> None:
    cfg = ScoringConfig(
        threshold=3.0, error_mean=1.0, error_std=0.5, warmup=0, average=10, prior_weight=0
    )
    stats = _warm_stats(1)
    stats[:, COUNT], stats[:, AVG] = 100, 1.0
    stats[:, 1], stats[:, 2] = 1.0, 0.1**2  # the average's mean and variance: calm stream

    def run(raws: list[float]) -> list[float]:
        st, out = stats.clone(), []
        for r in raws:
            raw = torch.tensor([r])
            s = score_step(raw.unsqueeze(1), raw, torch.ones(1, 1, dtype=torch.bool), st, cfg)
            out.append(s.score.item())
            st = s.stats
        return out

    spike = run([3.0] + [1.0] * 5)
    burst = run([3.0] * 6)
    assert max(spike) < 4.0 < burst[-1]  # (3 - 1) * 2 / 11 / 0.1 = 3.6 for one spike
    assert burst == sorted(burst)


def _run_sustained(cfg: ScoringConfig, errors: list[list[float]], age: int = 100) -> list[bool]:
    """Alerts over a sequence of per-feature errors, the raw error held at the calm mean."""
    stats, avg = _warm_stats(1, age), torch.zeros(1, len(errors[0]))
    stats[:, CALM] = 1000
    limit = torch.tensor(cfg.sustain_scale) * cfg.sustain_threshold
    out = []
    for e in errors:
        err = torch.tensor([e])
        observed = torch.ones_like(err, dtype=torch.bool)
        hit = None
        if cfg.sustains(err.shape[1]):  # as the engine does
            avg, hit = sustain_step(err, observed, avg, stats[:, AGE], cfg, limit)
        raw = torch.tensor([cfg.error_mean])  # each reading on its own is unremarkable
        s = score_step(err, raw, observed, stats, cfg, sustained=hit)
        out.append(bool(s.anomalous.item()))
        stats = s.stats
    return out


def test_sustained_rule_flags_an_error_that_keeps_its_sign() -> None:
    # 1.5 sigma on one feature, every reading: never over the per-reading threshold.
    cfg = ScoringConfig(
        threshold=4.0, warmup=0, sustain=10, sustain_scale=(0.3, 0.3), sustain_threshold=4.0
    )
    shifted = _run_sustained(cfg, [[1.5, 0.0]] * 30)
    # after k readings the average is 1.5 (1 - (9/11)^k): 1.23 >= 4 x 0.3 at k = 9
    assert shifted.index(True) == 8 and all(shifted[8:])
    # a restarted state decides only once its average has a whole span behind it
    assert _run_sustained(cfg, [[1.5, 0.0]] * 30, age=0).index(True) == 10
    assert not any(_run_sustained(cfg, [[1.5, 0.0], [-1.5, 0.0]] * 15))  # sign flips: noise
    assert not any(_run_sustained(replace(cfg, sustain=0), [[1.5, 0.0]] * 30))  # off
    assert not any(_run_sustained(replace(cfg, sustain_threshold=0.0), [[1.5, 0.0]] * 30))


def test_sustained_rule_starts_no_alert_in_an_incidents_aftermath() -> None:
    cfg = ScoringConfig(
        threshold=4.0, warmup=0, sustain=10, sustain_scale=(0.3,), sustain_threshold=4.0
    )
    stats, avg = _warm_stats(1), torch.zeros(1, 1)
    limit = torch.tensor(cfg.sustain_scale) * cfg.sustain_threshold
    stats[:, CALM] = 1000
    alerts = []
    # one alert on the raw error, then an error that keeps its sign: the state settling
    for t in range(60):
        err = torch.tensor([[1.5 if t > 0 else 0.0]])
        observed = torch.ones_like(err, dtype=torch.bool)
        avg, hit = sustain_step(err, observed, avg, stats[:, AGE], cfg, limit)
        raw = torch.tensor([cfg.error_mean + (5.0 if t == 0 else 0.0) * cfg.error_std])
        s = score_step(err, raw, observed, stats, cfg, sustained=hit)
        alerts.append(bool(s.anomalous.item()))
        stats = s.stats
    hold = SUSTAIN_HOLD * cfg.sustain  # readings since the alert, counted from the next one
    assert alerts[0] and not any(alerts[1 : hold + 1])
    assert all(alerts[hold + 1 :])  # still there after the hold: news


def test_scoring_config_round_trips_the_sustained_rule() -> None:
    cfg = ScoringConfig(sustain=20, sustain_scale=(0.2, 0.4), sustain_threshold=8.5)
    assert ScoringConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.sustains(2) and not cfg.sustains(3)
    with pytest.raises(ValueError, match="sustain_scale"):
        ScoringConfig(sustain=20, sustain_scale=(0.0, 1.0), sustain_threshold=8.5)


def test_sustained_alerts_feed_the_reading_itself() -> None:
    # Protection is for readings that are wrong themselves; a trend verdict is not one.
    cfg = ScoringConfig(
        threshold=4.0, warmup=0, sustain=10, sustain_scale=(0.3,), sustain_threshold=4.0
    )
    stats = _warm_stats(1)
    stats[:, CALM] = 1000
    err, observed = torch.tensor([[1.5]]), torch.ones(1, 1, dtype=torch.bool)
    raw = torch.tensor([cfg.error_mean])
    s = score_step(err, raw, observed, stats, cfg, sustained=torch.tensor([True]))
    assert s.anomalous.item() and not s.protect.item()
    s = score_step(err, raw, observed, stats, cfg, stuck=torch.tensor([True]))
    assert s.anomalous.item() and s.protect.item()
