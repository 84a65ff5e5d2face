"""Each stream read at the fleet's size (ScoringConfig.sizes, detector.core.sizes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.checkpointing.codec import StateShape
from detector.core.engine import Engine
from detector.core.incidents import IncidentConfig
from detector.core.scoring import ScoringConfig
from detector.core.sizes import (
    OUTLIER,
    READINGS,
    WATCH,
    Sizes,
    SizeState,
    inverse,
    size_step,
)
from detector.core.statsrow import LAYOUT
from tests.unit.factories import make_bundle

T0 = 1_795_219_200_000
SIZES = (10.0, 0.0, -3.0, 0.5, 0.0, 2.0)  # channel 1 as it came (step 0)
CFG = ScoringConfig(
    threshold=3.0, warmup=0, error_mean=0.1, error_std=0.1, own_scale=True, incidents=None
)


def _pump(n: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = np.cumsum(rng.standard_normal((n, 3)), axis=0) * 0.3 + rng.standard_normal((n, 3))
    v[5, 0] = np.nan  # a missing value
    v[9:12, 2] = v[8, 2]  # three repeats: two second differences of 0, no size
    return v.astype(np.float32)


def _geometric_step(x: np.ndarray) -> float:
    """The geometric mean of the first READINGS second differences not 0 of given values,
    from the fourth on skipping one 30x over the mean so far, and one 30x under as 30x."""
    d = np.abs(np.diff(x[~np.isnan(x)].astype(np.float64), n=2))
    logs: list[float] = []
    for v in np.log(d[d > 0]):
        m = float(np.mean(logs)) if logs else 0.0
        if len(logs) >= 3 and v >= m + OUTLIER:
            continue
        logs.append(v if len(logs) < 3 else max(v, m - OUTLIER))
        if len(logs) == READINGS:
            break
    return float(np.exp(np.mean(logs)))


def _read(v: np.ndarray) -> tuple[np.ndarray, SizeState]:
    sz = Sizes.of(SIZES, 3, torch.device("cpu"))
    assert sz is not None
    st = SizeState.zeros(1, 3)
    out = []
    for row in torch.from_numpy(v):
        read = size_step(row.unsqueeze(0), st, sz)
        u, st, grown = read.u, read.state, read.grown
        assert not grown.any()
        assert torch.allclose(inverse(u, read, sz), row.unsqueeze(0), equal_nan=True, atol=1e-4)
        out.append(u[0].numpy())
    return np.array(out), st


def test_a_pump_ten_times_the_size_reads_as_the_same_pump() -> None:
    small = _pump()
    big = small * 10.0 + 50.0  # ten times the changes, at another level
    u_small, st = _read(small)
    u_big, _ = _read(big)
    np.testing.assert_allclose(u_big[:, [0, 2]], u_small[:, [0, 2]], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(u_big[:, 1], big[:, 1])  # a channel left as it came
    assert u_small[0, 0] == pytest.approx(10.0) and u_small[0, 2] == pytest.approx(-3.0)
    assert np.isnan(u_small[5, 0])  # missing stays missing
    # frozen after READINGS values and READINGS second differences not 0
    n = st.n[0].numpy()
    assert list(n[[0, 2]]) == [79, 80] and list(n[[3, 5]]) == [READINGS] * 2  # values given
    assert st.level[0, 0] == pytest.approx(np.nanmean(small[: READINGS + 1, 0]), rel=1e-5)
    for j in (0, 2):  # the repeats' zero second differences were skipped
        assert float(st.step[0, j].exp()) == pytest.approx(_geometric_step(small[:, j]), rel=1e-4)


def _ratio(v: np.ndarray) -> float:
    _, st = _read(np.column_stack([v, v, v]))
    return float(2.0 / st.step[0, 2].exp())


def test_a_glitch_or_a_cycles_flank_among_the_first_readings_barely_moves_the_size() -> None:
    rng = np.random.default_rng(1)
    walk = np.cumsum(rng.standard_normal(200)) * 0.7
    glitch = walk.copy()
    glitch[5] += 1000.0
    assert 0.8 < _ratio(glitch) / _ratio(walk) <= 1.0  # a mean would read it 100x smaller
    t = np.arange(2000)
    day = 50.0 * np.sin(2 * np.pi * t / 1440) + rng.standard_normal(2000)  # noise 1, cycle 50
    flank, crest = day[:100], day[360:460]  # first seen on the rising flank, at the crest
    assert 0.7 < _ratio(flank) / _ratio(crest) < 1.4


def test_the_engine_scores_a_big_pump_as_the_small_one_and_answers_in_its_units() -> None:
    scoring = ScoringConfig(**{**CFG.__dict__, "sizes": SIZES})
    eng = Engine(make_bundle(features=3, scoring=scoring), max_streams=4)
    small = _pump(120)
    big = small * 10.0 + 50.0
    big[:, 1] = small[:, 1]  # the channel not read at the fleet's size: as the small one's
    ts = T0 + 60_000 * np.arange(120)
    res = eng.process(["small"] * 120 + ["big"] * 120, np.tile(ts, 2), np.vstack([small, big]), 0)
    a, b = slice(0, 120), slice(120, 240)
    np.testing.assert_allclose(res.score[b], res.score[a], rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(res.anomalous[b], res.anomalous[a])
    # from the second reading on (the first has no size yet: read at ratio 1)
    exp_a, exp_b = res.expected[a][1:, [0, 2]], res.expected[b][1:, [0, 2]]
    np.testing.assert_allclose(exp_b, exp_a * 10.0 + 50.0, rtol=1e-3, atol=1e-2)


def test_a_streams_size_outlives_a_gap_and_is_measured_afresh_after_an_eviction() -> None:
    scoring = ScoringConfig(**{**CFG.__dict__, "sizes": SIZES})
    eng = Engine(make_bundle(features=3, scoring=scoring), max_streams=1, max_gap_ms=3_600_000)
    v = _pump(150) * 10.0
    eng.process(["a"] * 150, T0 + 60_000 * np.arange(150), v, 0)
    span = LAYOUT.at("size_n", 3)

    def size_n() -> list[float]:
        return eng.store.stats[eng.store.live_slots()[0], span].tolist()

    full = size_n()
    assert full == [149, 0.0, 150, READINGS, 0.0, READINGS]  # 1 not sized; a missing value
    res = eng.process(["a"], np.array([T0 + 86_400_000]), v[:1], 0)  # a day later: a restart
    assert res.resets == 1 and size_n() == [150, 0.0, 151, *full[3:]]  # counted on
    eng.process(["b"], np.array([T0 + 86_400_000]), v[:1], 0)  # "a" evicted for "b"
    assert size_n()[0] == 1.0  # "b" measured from its first value


def test_no_reading_is_judged_while_the_streams_size_is_measured() -> None:
    v = _pump(200) * 10.0
    v[20, 0] += 1000.0  # glaring, but the stream's size is a guess from a dozen changes
    v[120, 0] += 1000.0
    ts = T0 + 60_000 * np.arange(200)

    def flagged(sizes: tuple[float, ...], n: int = 200) -> np.ndarray:
        scoring = ScoringConfig(**{**CFG.__dict__, "sizes": sizes})
        eng = Engine(make_bundle(features=3, scoring=scoring), max_streams=1)
        return eng.process(["a"] * n, ts[:n], v[:n], 0).anomalous

    assert flagged(())[20]  # a model that reads streams as they come judges it
    sized = flagged(SIZES)
    assert not sized[:READINGS].any() and sized[120]
    # A restart with the size known is judged after the usual warm-up (0 here).
    scoring = ScoringConfig(**{**CFG.__dict__, "sizes": SIZES})
    eng = Engine(make_bundle(features=3, scoring=scoring), max_streams=1, max_gap_ms=3_600_000)
    eng.process(["a"] * 100, ts[:100], v[100:], 0)
    later = eng.process(["a"] * 30, ts[:30] + 86_400_000, v[100:130], 0)
    assert later.resets == 1 and later.anomalous[20]


def _sizes_over(v: np.ndarray) -> tuple[list[int], float]:
    """Where ``v`` (T, 3) outgrew its size, and its last measured step of channel 0."""
    sz = Sizes.of(SIZES, 3, torch.device("cpu"))
    assert sz is not None
    st, grown_at = SizeState.zeros(1, 3), []
    for t, row in enumerate(torch.from_numpy(v)):
        _, st, grown, _ = size_step(row.unsqueeze(0), st, sz)
        if grown.any():
            grown_at.append(t)
            st = st.afresh(grown)
    return grown_at, float(st.step[0, 0].exp())


def test_a_machine_idle_at_first_is_measured_again_once_it_runs() -> None:
    rng = np.random.default_rng(3)
    running = _pump(400) * 10.0
    idle = running[:1] + rng.standard_normal((100, 3)).astype(np.float32) * 0.05
    grown_at, step = _sizes_over(np.vstack([idle, running]))
    assert len(grown_at) == 1 and 100 < grown_at[0] < 200  # once, soon after it starts
    _, own = _sizes_over(running[grown_at[0] - 99 :])  # as if first seen from there
    assert step == pytest.approx(own, rel=1e-4)
    # Only upward: measured running, it may idle later and run again, and keeps its size.
    assert _sizes_over(np.vstack([running[:200], idle, running[200:]]))[0] == []
    # A noise burst of the documented size (8 u for 60 readings) stays an anomaly.
    burst = running.copy()
    burst[200:260] += rng.standard_normal((60, 3)).astype(np.float32) * 8.0 * 10.0
    assert _sizes_over(burst)[0] == []
    # Past a stream's first WATCH values, a fault of 20x its noise for 300 readings stays a
    # fault: it is not taken for the stream's size.
    long = np.vstack([_pump(WATCH + 400, seed=1) * 10.0])
    fault = long.copy()
    fault[WATCH : WATCH + 300] += rng.standard_normal((300, 3)).astype(np.float32) * 200.0
    assert _sizes_over(fault)[0] == []
    early = long.copy()  # the same inside the window: measured afresh
    early[200:500] += rng.standard_normal((300, 3)).astype(np.float32) * 200.0
    assert len(_sizes_over(early)[0]) == 1


def test_a_stream_that_outgrew_its_size_starts_afresh_its_incident_kept() -> None:
    scoring = ScoringConfig(**{**CFG.__dict__, "sizes": SIZES, "incidents": IncidentConfig()})
    eng = Engine(make_bundle(features=3, scoring=scoring), max_streams=1)
    rng = np.random.default_rng(3)
    running = _pump(400) * 10.0
    idle = running[:1] + rng.standard_normal((100, 3)).astype(np.float32) * 0.05
    v = np.vstack([idle, running])
    grown_at, _ = _sizes_over(v)
    res = eng.process(["a"] * len(v), T0 + 60_000 * np.arange(len(v)), v, 0)
    assert res.resized == 1  # counted: anomalyd_state_resets_total{reason="resized"}
    slot = eng.store.live_slots()[0]
    assert eng.store.stats[slot, LAYOUT.at("age")] == len(v) - grown_at[0] - 1
    assert res.incidents is not None
    # The incident open at the restart outlives it and is resolved once, by the normal
    # readings after it (unjudged while the size is measured afresh, they are normal ones:
    # held open through them, it hid what came next; docs/quality.md, session 36).
    opened, resolved = np.flatnonzero(res.anomalous), np.flatnonzero(res.incidents.resolved)
    assert (opened < grown_at[0]).any() and len(resolved) in (len(opened), len(opened) - 1)
    assert ((resolved > grown_at[0]) & (resolved <= grown_at[0] + READINGS)).any()


def test_sizes_round_trip_and_a_wrong_count_names_what_is_wrong() -> None:
    assert ScoringConfig.from_dict(ScoringConfig(sizes=SIZES).to_dict()).sizes == SIZES
    with pytest.raises(ValueError, match="sizes has 3 values"):
        ScoringConfig(sizes=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="finite levels, then finite steps >= 0"):
        ScoringConfig(sizes=(1.0, -2.0))
    assert Sizes.of((1.0, 0.0), 1, torch.device("cpu")) is None  # no channel sized
    plain, sized = (
        make_bundle(features=3),
        make_bundle(features=3, scoring=ScoringConfig(sizes=SIZES)),
    )
    eng = Engine(plain, max_streams=4)
    eng.process(["s"], np.array([T0]), np.zeros((1, 3), np.float32), 0)
    assert not eng.swap(sized)  # a stream's size is measured against the fleet's
    width = eng.store.stat_width  # nor is a checkpoint of one restored into the other
    assert StateShape.of(plain, width).digest != StateShape.of(sized, width).digest
