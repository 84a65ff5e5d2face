"""Scoring: masking, warm-up, threshold, likelihood, statistics."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest
import torch
from torch import Tensor

from detector.core.judge import judge
from detector.core.newrange import RangeConfig
from detector.core.rules import (
    SUSTAIN_HOLD,
    FlatlineConfig,
    Kind,
    Rule,
    RuleVerdict,
    SustainConfig,
    Wave,
)
from detector.core.scoring import (
    ErrorScore,
    ScoringConfig,
    build_rules,
    feature_errors,
    likelihood_of,
)
from detector.core.statsrow import LAYOUT

AGE, AVG, CALM, COUNT, MEAN, QUIET, RUN, VAR = (
    LAYOUT.at(name) for name in ("age", "avg", "calm", "count", "mean", "quiet", "run", "var")
)


def _warm_stats(n: int, age: int = 100, features: int = 1) -> torch.Tensor:
    s = torch.zeros(n, LAYOUT.width(features))
    s[:, AGE] = age
    return s


@dataclass(frozen=True)
class _Step:
    score: Tensor
    likelihood: Tensor
    anomalous: Tensor
    protect: Tensor
    stats: Tensor  # (B, width) the rows after the reading


@dataclass(frozen=True)
class _Flags:
    """A rule that flags what it is told to: a stand-in for any rule of that kind."""

    name: str
    kind: Kind
    flags: Tensor
    columns: tuple[str, ...] = ()
    needs_values: bool = False

    def step(self, wave: Wave) -> RuleVerdict:
        return RuleVerdict(self.name, self.kind, self.flags)


def score_step(
    err: Tensor,
    raw: Tensor,
    observed: Tensor,
    stats: Tensor,
    cfg: ScoringConfig,
    *rules: Rule,
) -> _Step:
    """One wave judged by the error score and ``rules``, as the engine judges it, reading by
    reading: without incidents (tests/unit/test_incidents.py), ``anomalous`` is each rule's
    per-reading verdict."""
    # x (the readings) is read by the flatline rule only, not used here
    cfg = replace(cfg, incidents=None)
    wave = Wave(err, None, err, raw, observed, LAYOUT.split(stats, err.shape[1]))
    j = judge(wave, [ErrorScore(cfg), *rules], cfg)
    return _Step(j.score, j.likelihood, j.anomalous, j.protect, LAYOUT.join(j.row))


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
    s = score_step(err, raw, obs, _warm_stats(1, features=2), ScoringConfig(warmup=0))
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
    stats[:, MEAN], stats[:, VAR] = 1.0, 0.1**2  # the average's mean and variance: calm stream

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
    f = len(errors[0])
    stats = _warm_stats(1, age, features=f)
    stats[:, CALM] = 1000
    rules = build_rules(cfg, f, torch.device("cpu"))[1:]  # as the engine does
    out = []
    for e in errors:
        err = torch.tensor([e])
        observed = torch.ones_like(err, dtype=torch.bool)
        raw = torch.tensor([cfg.error_mean])  # each reading on its own is unremarkable
        s = score_step(err, raw, observed, stats, cfg, *rules)
        out.append(bool(s.anomalous.item()))
        stats = s.stats
    return out


def test_sustained_rule_flags_an_error_that_keeps_its_sign() -> None:
    # 1.5 sigma on one feature, every reading: never over the per-reading threshold.
    cfg = ScoringConfig(
        threshold=4.0, warmup=0, sustained=SustainConfig(10, scale=(0.3, 0.3), threshold=4.0)
    )
    shifted = _run_sustained(cfg, [[1.5, 0.0]] * 30)
    # after k readings the average is 1.5 (1 - (9/11)^k): 1.23 >= 4 x 0.3 at k = 9
    assert shifted.index(True) == 8 and all(shifted[8:])
    # a restarted state decides only once its average has a whole span behind it
    assert _run_sustained(cfg, [[1.5, 0.0]] * 30, age=0).index(True) == 10
    assert not any(_run_sustained(cfg, [[1.5, 0.0], [-1.5, 0.0]] * 15))  # sign flips: noise
    assert not any(_run_sustained(replace(cfg, sustained=None), [[1.5, 0.0]] * 30))  # off
    uncalibrated = replace(cfg, sustained=SustainConfig(10, (0.3, 0.3), threshold=0.0))
    assert not any(_run_sustained(uncalibrated, [[1.5, 0.0]] * 30))


def test_sustained_rule_starts_no_alert_in_an_incidents_aftermath() -> None:
    cfg = ScoringConfig(
        threshold=4.0, warmup=0, sustained=SustainConfig(10, scale=(0.3,), threshold=4.0)
    )
    stats = _warm_stats(1)
    rules = build_rules(cfg, 1, torch.device("cpu"))[1:]
    stats[:, CALM] = 1000
    alerts = []
    # one alert on the raw error, then an error that keeps its sign: the state settling
    for t in range(60):
        err = torch.tensor([[1.5 if t > 0 else 0.0]])
        observed = torch.ones_like(err, dtype=torch.bool)
        raw = torch.tensor([cfg.error_mean + (5.0 if t == 0 else 0.0) * cfg.error_std])
        s = score_step(err, raw, observed, stats, cfg, *rules)
        alerts.append(bool(s.anomalous.item()))
        stats = s.stats
    hold = (
        SUSTAIN_HOLD * 10
    )  # cfg.sustained.span: readings since the alert, counted from the next one
    assert alerts[0] and not any(alerts[1 : hold + 1])
    assert all(alerts[hold + 1 :])  # still there after the hold: news


def test_scoring_config_round_trips_the_sustained_rule() -> None:
    cfg = ScoringConfig(sustained=SustainConfig(20, scale=(0.2, 0.4), threshold=8.5))
    assert ScoringConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.sustains(2) and not cfg.sustains(3)
    with pytest.raises(ValueError, match=r"sustained\.scale"):
        SustainConfig(20, scale=(0.0, 1.0), threshold=8.5)


def test_sustained_alerts_feed_the_reading_itself() -> None:
    # Protection is for readings that are wrong themselves; a trend verdict is not one.
    cfg = ScoringConfig(
        threshold=4.0, warmup=0, sustained=SustainConfig(10, scale=(0.3,), threshold=4.0)
    )
    stats = _warm_stats(1)
    stats[:, CALM] = 1000
    err, observed = torch.tensor([[1.5]]), torch.ones(1, 1, dtype=torch.bool)
    raw = torch.tensor([cfg.error_mean])
    sustained = _Flags("sustained", Kind.TREND, torch.tensor([True]))
    s = score_step(err, raw, observed, stats, cfg, sustained)
    assert s.anomalous.item() and not s.protect.item()
    stuck = _Flags("flatline", Kind.READING, torch.tensor([True]))
    s = score_step(err, raw, observed, stats, cfg, stuck)
    assert s.anomalous.item() and s.protect.item()


# A model manifest's scoring section as written before the rules had their own configs.
_FLAT_MANIFEST = {
    "threshold": 5.2,
    "error_mean": 0.8,
    "error_std": 0.3,
    "warmup": 10,
    "window": 1000,
    "prior_weight": 100.0,
    "std_floor": 0.05,
    "protect_state": True,
    "protect_max": 30,
    "whiten": [],
    "stuck_after": [0, 12],
    "average": 10,
    "cooldown": 150,
    "range_margin": 0.1,
    "range_after": 400,
    "sustain": 20,
    "sustain_scale": [0.2, 0.4],
    "sustain_threshold": 8.5,
}


def test_manifests_of_the_flat_format_still_load_into_rule_configs() -> None:
    cfg = ScoringConfig.from_dict(_FLAT_MANIFEST)
    assert (cfg.threshold, cfg.error_mean, cfg.average, cfg.cooldown) == (5.2, 0.8, 10, 150)
    assert cfg.flatline == FlatlineConfig((0, 12))
    assert cfg.sustained == SustainConfig(20, scale=(0.2, 0.4), threshold=8.5)
    # new territory shared the error alerts' cooldown then: it keeps that value
    assert cfg.new_range == RangeConfig(margin=0.1, after=400, cooldown=150)
    assert ScoringConfig.from_dict(cfg.to_dict()) == cfg  # and saves in the new format
    assert "range_margin" not in cfg.to_dict()
    # rules that were off in the flat format are off (None), not configured at zero
    off = {**_FLAT_MANIFEST, "stuck_after": [], "sustain": 0, "range_margin": 0.0}
    cfg = ScoringConfig.from_dict(off)
    assert (cfg.flatline, cfg.sustained, cfg.new_range) == (None, None, None)


def test_an_old_field_name_overrides_the_nested_config() -> None:
    base = ScoringConfig(new_range=RangeConfig(margin=0.1, cooldown=150)).to_dict()
    cfg = ScoringConfig.from_dict({**base, "range_margin": 0.25})
    assert cfg.new_range == RangeConfig(margin=0.25, cooldown=150)


def test_only_configured_rules_are_built_and_each_owns_its_columns() -> None:
    cpu = torch.device("cpu")
    assert [r.name for r in build_rules(ScoringConfig(), 2, cpu)] == ["error"]
    cfg = ScoringConfig.from_dict(_FLAT_MANIFEST)
    rules = build_rules(cfg, 2, cpu)
    assert [r.name for r in rules] == ["error", "flatline", "sustained", "new_range"]
    assert [r.name for r in build_rules(cfg, 3, cpu)] == ["error", "flatline", "new_range"]
    owned = [c for r in rules for c in r.columns]
    assert len(owned) == len(set(owned))


def test_the_statistics_row_layout_is_defined_once() -> None:
    f = 3
    names = [p.name for p in LAYOUT.parts]
    # LAYOUT_VERSION 12: + the level rule's F² + 18F
    assert LAYOUT.width(f) == 9 + 26 * f + 8 + f + 3 * f + f * f + 7 * f + f * f + 18 * f
    assert LAYOUT.width(65) == 9 + 51 * 65 + 8 + 65 + 3 * 65  # no pair block beyond 64
    rows = torch.arange(2 * LAYOUT.width(f), dtype=torch.float32).reshape(2, -1)
    view = LAYOUT.split(rows, f)
    assert torch.equal(LAYOUT.join(view), rows)
    for name in names:
        assert torch.equal(getattr(view, name), rows[:, LAYOUT.at(name, f)])
    restart = torch.zeros(LAYOUT.width(f), dtype=torch.bool)
    for span in LAYOUT.restart_spans(f):
        restart[span] = True
    kept = {n for n in names if not restart[LAYOUT.at(n, f)].any()}
    assert kept == {"count", "mean", "var", "run", "avg", "quiet", "range_quiet", "calm"} | {
        "lo",
        "hi",
        "seen",
        "incident",
        "drift_n",
        "own_n",
        "own_ms",
        "drift_ms",
        "diff_n",
        "diff_ms",
        "level_own",
        "size_level",  # a stream's size outlives a gap
        "size_prev",
        "size_delta",
        "size_step",
        "size_n",
        "size_recent",
    }
    with pytest.raises(ValueError, match="columns"):
        LAYOUT.split(rows[:, :-1], f)


def test_folding_a_step_into_its_gathered_rows_equals_joining_it() -> None:
    f = 3
    rows = torch.randn(4, LAYOUT.width(f))
    base = LAYOUT.split(rows, f)
    # A rule's step: new tensors for some parts, one part set to another's old view (the
    # old value must win over that part's own new value), one view updated in place.
    after = replace(
        base,
        count=base.count + 1,
        x_prev=torch.zeros_like(base.x_prev),
        last_obs=base.x_prev,  # a later part than x_prev: read before x_prev is written
        lo=torch.full_like(base.lo, -7.0),
    )
    base.age.add_(1)
    expected = LAYOUT.join(after)
    got = LAYOUT.fold(after, base, rows)
    assert got is rows
    assert torch.equal(got, expected)
