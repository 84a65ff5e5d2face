"""Held channels: a sensor polled faster than it updates is judged at its updates, not at
its repeats (ScoringConfig.held, detector.core.held)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detector.checkpointing.codec import StateShape
from detector.core.engine import Engine
from detector.core.held import repeats
from detector.core.incidents import rule_names
from detector.core.rules import FlatlineConfig
from detector.core.scoring import Scaler, ScoringConfig
from detector.core.shift import ShiftConfig
from detector.core.waves import BatchResult
from tests.unit.factories import make_bundle

T0 = 1_795_219_200_000
CFG = ScoringConfig(threshold=3.0, warmup=0, error_mean=0.1, error_std=0.1, incidents=None)


def _engine(held: tuple[int, ...], **over: object) -> Engine:
    scoring = ScoringConfig(**{**CFG.__dict__, "held": held, **over})
    return Engine(make_bundle(features=3, scoring=scoring), max_streams=4)


def _run(eng: Engine, rows: np.ndarray) -> list[BatchResult]:
    out = []
    for k, row in enumerate(rows):
        ts = np.array([T0 + 60_000 * k])
        out.append(eng.process(["s"], ts, row[None].astype(np.float32), 0))
    return out


def test_a_held_channels_repeats_open_nothing_its_new_value_is_judged() -> None:
    rows = np.zeros((8, 3))
    rows[2:, 2] = 40.0  # a new value far from anything expected, then held
    held = _run(_engine((2,)), rows)
    judged = _run(_engine(()), rows)
    assert held[2].anomalous[0]  # the update is judged as any reading
    assert not any(r.anomalous[0] for r in held[3:])
    assert all(r.errors[0, 2] == 0.0 for r in held[3:])  # a repeat says "no new value yet"
    assert judged[3].anomalous[0]  # judged, each repeat of it errs again


def test_a_held_sensor_that_stops_updating_is_still_stuck() -> None:
    rows = np.zeros((9, 3))
    rows[:, 2] = [1.0, 2.0, 3.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    res = _run(_engine((2,), threshold=math.inf, flatline=FlatlineConfig((0, 0, 4))), rows)
    flagged = [k for k, r in enumerate(res) if r.anomalous[0]]
    assert flagged[0] == 7  # its 4th repeat in a row
    assert rule_names(int(res[7].rules[0])) == ["flatline"]


def test_the_model_reads_a_held_repeat_as_it_came() -> None:
    rows = np.random.default_rng(0).standard_normal((12, 3))
    rows[:, 1] = np.repeat(rows[::4, 1], 4)
    held, plain = _engine((1,), threshold=math.inf), _engine((), threshold=math.inf)
    _run(held, rows)
    _run(plain, rows)  # (nothing protected: every reading fed as it came)
    torch.testing.assert_close(held.store.h, plain.store.h)
    torch.testing.assert_close(held.store.c, plain.store.c)


def test_the_trainer_finds_the_repeats_the_engine_finds() -> None:
    rng = np.random.default_rng(1)
    v = rng.standard_normal((200, 3)).astype(np.float32)
    v[:, 1] = np.repeat(v[::5, 1], 5)
    v[rng.random(200) < 0.1, 1] = np.nan  # missing readings: a repeat spans them
    v[50:60, 1] = v[49, 1]
    (res,) = [_engine((1,), threshold=math.inf).process(["s"] * 200, T0 + np.arange(200), v, 0)]
    unjudged = (res.errors[:, 1] == 0) & ~np.isnan(v[:, 1])
    np.testing.assert_array_equal(unjudged, repeats(v, (1,))[:, 1])
    assert unjudged.sum() > 100 and not repeats(v, (1,))[:, [0, 2]].any()


def test_repeats_are_compared_in_the_units_the_engine_compares_them() -> None:
    v = np.array([[0.0, 1023.99], [0.0, 1023.99005]], np.float32)  # one float32 step apart
    scaler = Scaler((0.0, -1.0), (1.0, 3.0))  # ... that scale to one value
    bundle = make_bundle(
        features=2, scaler=scaler, scoring=ScoringConfig(**{**CFG.__dict__, "held": (1,)})
    )
    res = Engine(bundle, max_streams=2).process(["s", "s"], T0 + np.arange(2), v, 0)
    assert res.errors[1, 1] == 0.0  # the engine's repeat
    assert repeats(v, (1,), scaler)[1, 1] and not repeats(v, (1,))[1, 1]


def test_held_round_trips_restarts_streams_and_names_what_is_wrong() -> None:
    sc = ScoringConfig(held=(0, 2))
    assert ScoringConfig.from_dict(sc.to_dict()).held == (0, 2)
    with pytest.raises(ValueError, match="must not overlap"):
        ScoringConfig(held=(1,), context=(1,))
    with pytest.raises(ValueError, match="distinct feature indices in order"):
        ScoringConfig(held=(2, 1))
    plain, held = make_bundle(features=3), make_bundle(features=3, scoring=sc)
    eng = Engine(plain, max_streams=4)
    eng.process(["s"], np.array([T0]), np.zeros((1, 3), np.float32), 0)
    assert not eng.swap(held)  # the statistics were kept over other readings
    width = eng.store.stat_width
    assert StateShape.of(plain, width).digest != StateShape.of(held, width).digest


def test_the_shift_rule_never_reads_a_held_channel() -> None:
    """Its level is known at its updates only: the rule's fast level could not follow it."""
    rng = np.random.default_rng(2)
    rows = rng.standard_normal((160, 3))
    rows[:, 2] = np.repeat(rows[::5, 2], 5)
    rows[100:, 2] += 10.0  # the held channel's level leaves the others'
    shift = ShiftConfig(fast=4, slow=20, memory=100, prior=(1.0, 1.0, 1.0), threshold=4.0)

    def shifted(held: tuple[int, ...]) -> bool:
        eng = _engine(held, threshold=math.inf, shift=shift)
        ts = T0 + 60_000 * np.arange(len(rows))
        res = eng.process(["s"] * len(rows), ts, rows.astype(np.float32), 0)
        return any("shift" in rule_names(int(b)) for b in res.rules)

    assert shifted(()) and not shifted((2,))
