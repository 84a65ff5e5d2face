"""Scoring: masking, warm-up, threshold, likelihood, statistics."""

from __future__ import annotations

import math

import torch

from detector.scoring import (
    AGE,
    AVG,
    COUNT,
    QUIET,
    RUN,
    STAT_WIDTH,
    ScoringConfig,
    feature_errors,
    likelihood_of,
    score_step,
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
