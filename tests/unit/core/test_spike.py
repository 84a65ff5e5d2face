"""The spike rule: a value that jumps and comes back, seen as two opposite-signed errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.core.incidents import RULE_NAMES
from detector.core.rules import Wave
from detector.core.scoring import ScoringConfig, build_rules
from detector.core.spike import SpikeConfig, SpikeRule, spike_pairs
from detector.core.statsrow import LAYOUT
from tests.unit.factories import clean_series, make_bundle
from training.budget import spike_statistic
from training.calibrate import run_engine

SPIKE_BIT = 1 << RULE_NAMES.index("spike")


def _flags(
    errors: list[list[float]], threshold: float = 4.0, scale: tuple[float, ...] = ()
) -> list[bool]:
    """The rule stepped over one stream's per-reading errors (nan: missing), from cold."""
    f = len(errors[0])
    rule = SpikeRule(SpikeConfig(threshold, scale), f, torch.device("cpu"))
    row = LAYOUT.split(torch.zeros(1, LAYOUT.width(f)), f)
    out = []
    for e in errors:
        x = torch.tensor([e])
        observed = ~torch.isnan(x)
        err = torch.where(observed, x, 0.0)
        wave = Wave(x, None, err, err.norm(dim=1), observed, row)
        verdict = rule.step(wave)
        out.append(bool(verdict.flags[0]))
        row = LAYOUT.split(LAYOUT.join(row).clone(), f)
        row.e_prev.copy_(verdict.state["e_prev"])
    return out


def test_a_jump_that_comes_back_flags_the_return_and_a_step_that_stays_does_not() -> None:
    nan = float("nan")
    assert _flags([[0.1, 0.0], [6.0, 0.2], [-5.0, 0.1], [0.3, 0.0]]) == [0, 0, 1, 0]
    assert _flags([[0.1, 0.0], [0.0, -7.0], [0.1, 4.5], [0.0, 0.1]]) == [0, 0, 1, 0]
    # a cycle's edge or a level shift: one large error, then the model follows
    assert not any(_flags([[0.1, 0.0], [9.0, 0.0], [0.8, 0.1], [-0.5, 0.0]]))
    # the smaller of the pair must reach the threshold; a missing value pairs with nothing
    assert not any(_flags([[6.0, 0.0], [-3.0, 0.0]]))
    assert not any(_flags([[6.0, 0.0], [nan, 0.0], [-6.0, 0.0]]))
    # two channels jumping the same way is no pair: the sign must turn on one channel
    assert not any(_flags([[6.0, 6.0], [6.0, 6.0]]))


def test_the_pair_is_the_smaller_of_the_two_on_the_channel_where_it_is_largest() -> None:
    e = torch.tensor([[-5.0, 2.0, 1.0], [4.0, 4.0, -0.5]])
    prev = torch.tensor([[6.0, -3.0, 1.0], [4.0, -9.0, 0.5]])
    assert spike_pairs(e, prev).tolist() == [[5.0, 2.0, 0.0], [0.0, 4.0, 0.5]]
    assert spike_pairs(e, prev).amax(dim=1).tolist() == [5.0, 4.0]


def test_each_feature_pairs_at_its_own_multiple_of_the_threshold() -> None:
    jump = [[0.1, 0.0], [6.0, 0.2], [-5.0, 0.1], [0.3, 0.0]]
    assert _flags(jump, scale=(1.0, 1.0)) == [0, 0, 1, 0]
    assert _flags(jump, scale=(1.3, 1.0)) == [0, 0, 0, 0]  # channel 0 judged at 5.2
    assert _flags(jump, scale=(1.0, 9.0)) == [0, 0, 1, 0]  # another channel's scale: as before


def test_config_round_trips_and_an_uncalibrated_rule_is_off() -> None:
    cfg = ScoringConfig(spike=SpikeConfig(3.7))
    assert ScoringConfig.from_dict(cfg.to_dict()) == cfg
    cpu = torch.device("cpu")
    assert "spike" in [r.name for r in build_rules(cfg, 2, cpu)]
    assert "spike" not in [r.name for r in build_rules(ScoringConfig(spike=SpikeConfig()), 2, cpu)]
    old = {k: v for k, v in cfg.to_dict().items() if k != "spike"}  # a manifest before it
    assert ScoringConfig.from_dict(old).spike is None
    with pytest.raises(ValueError, match=r"spike\.threshold"):
        SpikeConfig(-1.0)


def test_the_trainer_calibrates_on_the_statistic_the_engine_judges_by() -> None:
    series = clean_series(4, 400, seed=3)
    # A spike on each stream; the first on the last warm-up reading, so that the first
    # reading judged is its return.
    for s, at in zip(series, (9, 150, 200, 250), strict=True):
        s.values[at, 0] += 8.0
    b = make_bundle(features=2)
    thr = 2.5
    cfg = ScoringConfig(threshold=float("inf"), warmup=10, spike=SpikeConfig(thr))
    run = run_engine(b.module, b.scaler, b.features, series, cfg)  # collected after warm-up
    live = (run.rules & SPIKE_BIT) != 0
    offline = spike_statistic(run) >= thr
    assert live.sum() >= 4  # each spike's return at least
    # Every collected reading, a stream's first one too: it pairs with the last warm-up
    # reading, as the engine's state holds it.
    assert np.array_equal(live, offline)
    first = np.r_[True, run.stream[1:] != run.stream[:-1]]
    assert np.all(run.e_prev[first].any(axis=1))
