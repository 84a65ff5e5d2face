"""Context channels: the model reads them, no rule judges them (ScoringConfig.context)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.checkpointing.codec import StateShape
from detector.core.engine import Engine
from detector.core.scoring import ScoringConfig
from tests.unit.factories import make_bundle

T0 = 1_795_219_200_000
CFG = ScoringConfig(threshold=3.0, warmup=0, error_mean=0.1, error_std=0.1, incidents=None)


def _run(
    context: tuple[int, ...], rows: np.ndarray, nowcast: bool = True
) -> tuple[Engine, list[bool]]:
    bundle = make_bundle(features=3, nowcast=nowcast, scoring=_cfg(context))
    eng = Engine(bundle, max_streams=4)
    flags = []
    for k, row in enumerate(rows):
        res = eng.process(["s"], np.array([T0 + 60_000 * k]), row[None].astype(np.float32), 0)
        flags.append(bool(res.anomalous[0]))
    return eng, flags


def _cfg(context: tuple[int, ...]) -> ScoringConfig:
    return ScoringConfig(**{**CFG.__dict__, "context": context})


def test_a_context_channels_switch_opens_nothing_the_same_switch_judged_does() -> None:
    rows = np.zeros((6, 3))
    rows[3:, 2] = 40.0  # a command switched on for good
    # (no nowcast: an untrained model's random cross gains would read it into the others)
    _, judged = _run((), rows, nowcast=False)
    _, context = _run((2,), rows, nowcast=False)
    assert judged[3] and not any(context)


def test_a_judged_channel_beside_a_context_one_is_still_flagged() -> None:
    rows = np.zeros((6, 3))
    rows[4, 0] = 40.0
    _, flags = _run((2,), rows)
    assert flags == [False] * 4 + [True, False]


def test_the_model_reads_a_context_channel_as_given_even_on_a_protected_reading() -> None:
    """A protected reading feeds the stand-in on its judged channels; a context channel's
    value (a command sent with the anomaly) reaches the state as it came."""

    def state(context: tuple[int, ...], command: float) -> torch.Tensor:
        rows = np.zeros((3, 3))
        rows[2] = [40.0, 0.0, command]  # judged channel 0 anomalous: protected
        eng, flags = _run(context, rows)
        assert flags[2]
        return eng.store.h.clone()

    assert not torch.allclose(state((2,), 5.0), state((2,), 0.0))
    torch.testing.assert_close(state((), 5.0), state((), 0.0))  # judged: all stand-in


def test_context_errors_count_nowhere() -> None:
    eng = Engine(make_bundle(features=3, scoring=_cfg((1,))), max_streams=4)
    res = eng.process(["s"], np.array([T0]), np.array([[0.0, 99.0, 0.0]], np.float32), 0)
    assert res.errors[0, 1] == 0.0 and not res.anomalous[0]


def test_context_round_trips_and_names_what_is_wrong() -> None:
    cfg = _cfg((0, 2))
    assert ScoringConfig.from_dict(cfg.to_dict()) == cfg
    assert ScoringConfig.from_dict({**cfg.to_dict(), "context": [0.0, 2.0]}).context == (0, 2)
    with pytest.raises(ValueError, match="distinct feature indices"):
        _cfg((2, 0))
    with pytest.raises(ValueError, match="must leave a judged channel"):
        Engine(make_bundle(features=2, scoring=_cfg((0, 1))), max_streams=2)
    with pytest.raises(ValueError, match="must leave a judged channel"):
        Engine(make_bundle(features=2, scoring=_cfg((5,))), max_streams=2)


def test_a_missing_context_value_is_fed_the_expectation() -> None:
    b = make_bundle(features=3, nowcast=True, scoring=_cfg((2,)))
    a, ref = Engine(b, max_streams=4), Engine(b, max_streams=4)
    ts = np.array([T0])
    first = a.process(["s"], ts, np.array([[0.5, 0.5, np.nan]], np.float32), 0)
    guess = first.expected[0, 2]
    ref.process(["s"], ts, np.array([[0.5, 0.5, guess]], np.float32), 0)
    torch.testing.assert_close(a.store.h, ref.store.h)


def test_the_nowcast_reads_a_context_channels_value_now() -> None:
    """A command sent now informs what the judged channels are expected to do now."""

    def expected(command: float) -> np.ndarray:
        eng = Engine(make_bundle(features=3, nowcast=True, scoring=_cfg((2,))), max_streams=4)
        eng.process(["s"], np.array([T0]), np.zeros((1, 3), np.float32), 0)
        now = np.array([[0.0, 0.0, command]], np.float32)
        return eng.process(["s"], np.array([T0 + 60_000]), now, 0).expected[0]

    assert abs(expected(5.0)[0] - expected(0.0)[0]) > 1e-3


def test_a_whitening_that_mixes_channels_leaks_nothing_into_a_context_one() -> None:
    w = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.7, 0.7, 1.0)  # row 2 (context) reads 0 and 1
    cfg = ScoringConfig(**{**_cfg((2,)).__dict__, "whiten": w})
    eng = Engine(make_bundle(features=3, scoring=cfg), max_streams=4)
    res = eng.process(["s"], np.array([T0]), np.array([[3.0, -2.0, 9.0]], np.float32), 0)
    assert res.errors[0, 2] == 0.0
    assert res.raw[0] == pytest.approx(np.sqrt((res.errors[0, :2] ** 2).sum() / 2), rel=1e-5)


def test_other_context_channels_start_every_stream_afresh_and_are_not_restored() -> None:
    plain, ctx = make_bundle(features=3), make_bundle(features=3, scoring=_cfg((2,)))
    eng = Engine(plain, max_streams=4)
    eng.process(["s"], np.array([T0]), np.zeros((1, 3), np.float32), 0)
    assert eng.swap(make_bundle(features=3, version=2))  # the same channels judged: kept
    assert not eng.swap(ctx)  # a channel no longer judged: its statistics start again
    assert eng.swap(make_bundle(features=3, scoring=_cfg((2,)), version=3))
    width = eng.store.stat_width
    assert StateShape.of(plain, width).digest != StateShape.of(ctx, width).digest
    assert StateShape.of(plain, width) == StateShape.of(make_bundle(features=3, version=9), width)
