"""The batched incremental engine computes exactly what a per-stream LSTM would."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from detector.core.engine import Engine, split_waves
from detector.core.model import calendar_features
from detector.core.newrange import RangeConfig
from detector.core.rules import FlatlineConfig, SustainConfig
from detector.core.scoring import Scaler, ScoringConfig
from detector.core.shift import ShiftConfig
from detector.core.statsrow import LAYOUT
from tests.unit.factories import make_bundle

T0 = 1_795_000_000_000


def _random_traffic(
    rng: np.random.Generator, streams: int, per_stream_max: int, features: int
) -> list[tuple[str, int, np.ndarray]]:
    """Readings of many streams, randomly interleaved, each stream's own in time order."""
    seqs = {f"s{i}": int(rng.integers(1, per_stream_max + 1)) for i in range(streams)}
    order = [s for s, k in seqs.items() for _ in range(k)]
    rng.shuffle(order)
    seen: dict[str, int] = {}
    out = []
    for s in order:
        k = seen.get(s, 0)
        seen[s] = k + 1
        out.append((s, T0 + 60_000 * k, rng.standard_normal(features).astype(np.float32)))
    return out


def _reference(
    bundle_module: torch.nn.Module, readings: list[tuple[str, int, np.ndarray]], periods: tuple
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """torch.nn.LSTM over each stream's own sequence: (expectations (T, F), h_T, c_T)."""
    by: dict[str, list[tuple[int, np.ndarray]]] = {}
    for s, ts, v in readings:
        by.setdefault(s, []).append((ts, v))
    out = {}
    with torch.no_grad():
        for s, rows in by.items():
            x = torch.tensor(np.stack([v for _, v in rows]))  # (T, F)
            cal = calendar_features(torch.tensor([t for t, _ in rows]), periods)
            xin = torch.cat([x, cal], dim=1).unsqueeze(0)  # (1, T, I)
            expect = bundle_module(xin)[0]  # (T, F)
            _, (h, c) = bundle_module.lstm(xin)
            out[s] = (expect, h[:, 0], c[:, 0])
    return out


def _check_equivalence(
    device: str, seed: int, nowcast: bool = False, smoothing: tuple[float, ...] = ()
) -> None:
    rng = np.random.default_rng(seed)
    bundle = make_bundle(
        features=4, hidden=24, layers=2, seed=seed, nowcast=nowcast, smoothing=smoothing
    )
    readings = _random_traffic(rng, streams=300, per_stream_max=12, features=4)
    ref = _reference(bundle.module, readings, bundle.module.config.periods_s)
    eng = Engine(bundle, max_streams=1000, device=device, initial_capacity=16, chunk=97)
    got_expect: dict[str, list[np.ndarray]] = {}
    i = 0
    while i < len(readings):  # random batch sizes: 1 .. 600 readings, duplicates included
        batch = readings[i : i + int(rng.integers(1, 600))]
        i += len(batch)
        ids = [s for s, _, _ in batch]
        res = eng.process(
            ids, np.array([t for _, t, _ in batch]), np.stack([v for _, _, v in batch]), 0
        )
        for j, s in enumerate(ids):
            got_expect.setdefault(s, []).append(res.expected[j])
    for s, (expect, h, c) in ref.items():
        np.testing.assert_allclose(np.stack(got_expect[s]), expect.numpy(), atol=1e-5)
        slot = eng.store.slot_of(s)
        assert slot is not None
        torch.testing.assert_close(eng.store.h[:, slot].cpu(), h, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(eng.store.c[:, slot].cpu(), c, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_engine_equals_per_stream_lstm(seed: int) -> None:
    _check_equivalence("cpu", seed)


def test_batched_engine_equals_per_stream_lstm_with_nowcast() -> None:
    _check_equivalence("cpu", 4, nowcast=True)


def test_batched_engine_equals_per_stream_lstm_with_a_smoothed_level() -> None:
    # The level persistence starts from is carried in each stream's state across batches.
    _check_equivalence("cpu", 5, nowcast=True, smoothing=(1.0, 0.5, 0.25, 0.7))


def test_nowcast_reads_the_other_channels_now_never_its_own() -> None:
    eng = Engine(make_bundle(features=3, nowcast=True), max_streams=8)
    ts = np.array([T0, T0, T0])
    warm = np.ones((3, 3), np.float32)
    eng.process(["a", "b", "c"], ts, warm, 0)
    now = np.array([[9.0, 1.0, 1.0], [1.0, 9.0, 1.0], [1.0, 1.0, 1.0]], np.float32)
    got = eng.process(["a", "b", "c"], ts + 60_000, now, 0).expected
    # a's jump on channel 0 moves the others' expectations, never channel 0's own
    assert got[0, 0] == pytest.approx(got[2, 0], abs=1e-6)
    assert abs(got[0, 1] - got[2, 1]) > 1e-3 and abs(got[0, 2] - got[2, 2]) > 1e-3
    assert got[1, 1] == pytest.approx(got[2, 1], abs=1e-6)
    assert abs(got[1, 0] - got[2, 0]) > 1e-3


def test_protected_nowcast_does_not_feed_on_the_anomaly() -> None:
    """Protected readings are replaced by an expectation that does not read them: a long
    shift on one channel must not pump the state reading after reading."""
    cfg = ScoringConfig(
        threshold=3.0, warmup=0, error_mean=0.1, error_std=0.1, protect_max=30, incidents=None
    )  # without incidents: each reading's verdict is alerted
    eng = Engine(make_bundle(features=3, nowcast=True, scoring=cfg), max_streams=4)
    ref = Engine(make_bundle(features=3, nowcast=True, scoring=cfg), max_streams=4)
    shifted = np.array([[50.0, 0.0, 0.0]], np.float32)
    for k in range(30):
        ts = np.array([T0 + 60_000 * k])
        res = eng.process(["s"], ts, shifted, 0)
        assert res.anomalous[0]
        # the state moves as if the stand-in had arrived: no reading of the shift in it
        ref.process(["s"], ts, _stand_in(ref), 0)
        torch.testing.assert_close(eng.store.h, ref.store.h, atol=1e-5, rtol=1e-4)


def _stand_in(eng: Engine) -> np.ndarray:
    """The reading a nowcast stream expects when nothing moved since its last fed reading."""
    slot = eng.store.slot_of("s")
    with torch.no_grad():
        if slot is None:
            h = torch.zeros(eng.store.h.shape[0], 1, eng.store.h.shape[2])
            x_prev = torch.zeros(1, 3)
        else:
            h = eng.store.h[:, slot : slot + 1]
            x_prev = eng.store.stats[slot : slot + 1, LAYOUT.at("x_prev", 3)]
        return eng.bundle.module.expect(h, x_prev, x_prev).numpy().astype(np.float32)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_engine_equals_per_stream_lstm_on_cuda() -> None:
    _check_equivalence("cuda", 3)


def test_waves_keep_each_streams_order() -> None:
    waves = split_waves(["a", "b", "a", "c", "a", "b"])
    assert waves is not None
    assert [w.tolist() for w in waves] == [[0, 1, 3], [2, 5], [4]]
    assert split_waves(["a", "b", "c"]) is None


def test_every_reading_gets_a_result_even_with_many_of_one_stream() -> None:
    eng = Engine(make_bundle(), max_streams=10)
    n = 50
    res = eng.process(["same"] * n, T0 + np.arange(n) * 1000, np.ones((n, 3), np.float32), now_ms=0)
    assert res.score.shape == (n,) and np.isfinite(res.score).all()
    assert (
        eng.store.stats[eng.store.slot_of("same"), LAYOUT.at("age")].item() == n
    )  # counted every one


def test_a_batch_split_into_waves_never_evicts_a_stream_it_carries() -> None:
    # A full store, then one batch of 5 new streams and "old", the least recently seen: in
    # waves of 2 the first waves' new streams once evicted "old" before its own wave came,
    # which then started it afresh (its state and its open incident lost).
    eng = Engine(make_bundle(), max_streams=6, chunk=2)
    one = np.ones((1, 3), np.float32)
    eng.process(["old"], np.array([T0]), one, now_ms=0)
    for i in range(5):
        eng.process([f"s{i}"], np.array([T0]), one, now_ms=1000)
    ids = [f"n{i}" for i in range(5)] + ["old"]
    eng.process(ids, np.full(6, T0 + 1000), np.ones((6, 3), np.float32), now_ms=2000)
    assert sorted(eng.store.stream_ids()) == sorted(ids)
    assert eng.store.stats[eng.store.slot_of("old"), LAYOUT.at("age")].item() == 2


def test_a_late_reading_does_not_make_the_next_one_a_gap() -> None:
    # A reading two days late once set the stream's time back, so the next in-time reading
    # read as a two-day gap: the state restarted and an open incident was resolved by the
    # unjudged warm-up readings, then opened again (two pages for one fault).
    eng = Engine(make_bundle(), max_streams=4, max_gap_ms=3_600_000)
    one = np.ones((1, 3), np.float32)
    resets = [
        eng.process(["a"], np.array([t]), one, now_ms=T0 + 200_000).resets
        for t in (T0, T0 + 60_000, T0 - 2 * 86_400_000, T0 + 120_000)
    ]
    assert resets == [0, 0, 0, 0]
    assert eng.store.stats[eng.store.slot_of("a"), LAYOUT.at("age")].item() == 4
    gap = eng.process(["a"], np.array([T0 + 2 * 3_600_000]), one, now_ms=T0 + 2 * 3_600_000)
    assert gap.resets == 1  # a real gap still restarts the stream


def test_an_incident_open_across_a_gap_is_one_incident() -> None:
    # After a gap the stream restarts; its warm-up readings, judged by no rule, once counted
    # as calm: they resolved the ongoing fault "recovered" and it opened again (two pages)
    from detector.core.incidents import IncidentConfig

    always = ScoringConfig(
        threshold=-1e9, warmup=10, protect_state=False, incidents=IncidentConfig(resolve_after=10)
    )
    eng = Engine(make_bundle(scoring=always), max_streams=4, max_gap_ms=3_600_000)
    one = np.ones((1, 3), np.float32)
    opened = resolved = 0
    for t in [T0 + k * 60_000 for k in range(25)] + [
        T0 + 3 * 3_600_000 + k * 60_000 for k in range(25)
    ]:
        res = eng.process(["a"], np.array([t]), one, now_ms=t)
        assert res.incidents is not None
        opened += int(res.anomalous[0])
        resolved += int(res.incidents.resolved[0])
    assert (opened, resolved) == (1, 0)


def test_missing_values_are_fed_the_expectation() -> None:
    """A reading with a missing feature advances the state as if the model's guess arrived."""
    b = make_bundle(features=2)
    a, ref = Engine(b, max_streams=4), Engine(b, max_streams=4)
    ts = np.array([T0])
    first = a.process(["s"], ts, np.array([[np.nan, 0.5]], np.float32), 0)
    guess = first.expected[0, 0]
    ref.process(["s"], ts, np.array([[guess, 0.5]], np.float32), 0)
    torch.testing.assert_close(a.store.h, ref.store.h)
    assert first.errors[0, 0] == 0.0  # the missing feature contributes nothing


def test_protect_state_feeds_expectation_for_anomalies() -> None:
    cfg = ScoringConfig(threshold=3.0, warmup=0, protect_state=True, error_mean=0.1, error_std=0.1)
    b = make_bundle(features=2, scoring=cfg)
    eng = Engine(b, max_streams=4)
    res = eng.process(["s"], np.array([T0]), np.array([[500.0, -500.0]], np.float32), 0)
    assert res.anomalous[0]
    h_protected = eng.store.h.clone()
    # The same reading fed as the expectation gives the same state: the spike was not learned.
    plain = Engine(make_bundle(features=2, scoring=cfg), max_streams=4)
    plain.process(["s"], np.array([T0]), res.expected[:1].astype(np.float32), 0)
    torch.testing.assert_close(h_protected, plain.store.h)


def test_protect_state_off_learns_the_anomaly() -> None:
    cfg = ScoringConfig(threshold=3.0, warmup=0, protect_state=False, error_mean=0.1, error_std=0.1)
    eng = Engine(make_bundle(features=2, scoring=cfg), max_streams=4)
    res = eng.process(["s"], np.array([T0]), np.array([[500.0, -500.0]], np.float32), 0)
    plain = Engine(make_bundle(features=2, scoring=cfg), max_streams=4)
    plain.process(["s"], np.array([T0]), res.expected[:1].astype(np.float32), 0)
    assert not torch.allclose(eng.store.h, plain.store.h)


def test_swap_keeps_state_for_compatible_model_and_resets_otherwise() -> None:
    eng = Engine(make_bundle(seed=0), max_streams=8)
    eng.process(["a", "b"], np.array([T0, T0]), np.ones((2, 3), np.float32), 0)
    assert eng.swap(make_bundle(seed=1, version=2)) is True
    assert len(eng.store) == 2
    assert eng.swap(make_bundle(hidden=8, version=3)) is False
    assert len(eng.store) == 0
    eng.process(["a"], np.array([T0]), np.ones((1, 3), np.float32), 0)
    assert eng.store.stream_ids() == ["a"]


def test_new_territory_alerts_once_per_cooldown_and_survives_a_gap() -> None:
    cfg = ScoringConfig(
        threshold=1e6,  # the error never alerts here: only new territory does
        warmup=0,
        protect_state=False,
        cooldown=5,
        new_range=RangeConfig(margin=0.1, after=20, cooldown=5),
        incidents=None,  # the rule's own cooldown is what is tested
    )
    eng = Engine(make_bundle(features=2, scoring=cfg), max_streams=4, max_gap_ms=3_600_000)
    minute = 60_000
    t = T0

    def feed(v: float, other: float = 0.5, gap: int = minute) -> tuple[bool, float]:
        nonlocal t
        t += gap
        r = eng.process(["s"], np.array([t]), np.array([[v, other]], np.float32), t)
        return bool(r.anomalous[0]), float(r.likelihood[0])

    assert not feed(5.0)[0]  # beyond nothing: the first value has no range yet
    for i in range(19):  # feature 0's range is now [0, 5]: 10 % of it is 0.5
        feed(i / 18)
    alerted, likelihood = feed(-0.4)  # inside the margin
    assert not alerted and likelihood < 1.0
    assert feed(-1.0) == (True, 1.0)  # beyond it: new territory, certain news
    assert [feed(-9.0)[0] for _ in range(5)] == [False] * 5  # its cooldown: one alert
    assert feed(-30.0, gap=2 * 3_600_000) == (True, 1.0)  # after a gap the range stays
    assert not feed(-31.0)[0]


def test_new_territory_on_any_feature_and_off_by_default() -> None:
    on = ScoringConfig(threshold=1e6, warmup=0, new_range=RangeConfig(margin=0.1, after=3))
    for cfg, expected in ((on, True), (ScoringConfig(threshold=1e6, warmup=0), False)):
        eng = Engine(make_bundle(features=2, scoring=cfg), max_streams=4)
        ts = T0 + 60_000 * np.arange(5)
        vals = np.array([[0, 0], [1, 1], [0, 1], [1, 0], [0.5, 9.0]], np.float32)
        res = eng.process(["s"] * 5, ts, vals, int(ts[-1]))
        assert res.anomalous.tolist() == [False] * 4 + [expected]
    with pytest.raises(ValueError, match=r"new_range\.margin"):
        RangeConfig(margin=-0.1)


def _gateway_poll(
    rng: np.random.Generator, streams: int, ticks: int, features: int
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A poll of gateway batches: each stream's readings together, some streams shorter,
    one stream back after a gap mid-poll, a few values missing, a few spikes."""
    ids, ts, rows = [], [], []
    for s in range(streams):
        n = ticks if s % 5 else ticks // 2  # later waves lose streams: the carry ends
        t = T0 + 60_000 * np.arange(n)
        if s == 3:
            t[2 * n // 3 :] += 86_400_000  # a gap reset in the middle of the carried waves
        ids += [f"s{s}"] * n
        ts.append(t)
        rows.append(rng.standard_normal((n, features)))
    values = np.concatenate(rows).astype(np.float32)
    values[rng.random(values.shape) < 0.02] = np.nan
    values[rng.random(len(values)) < 0.01, 0] = 25.0
    return ids, np.concatenate(ts), values


@pytest.mark.parametrize("max_streams", [64, 12, 8])
@pytest.mark.parametrize("chunk", [None, 5])
def test_waves_of_the_same_streams_carry_state_exactly(chunk: int | None, max_streams: int) -> None:
    # The state a wave hands to the next wave of the same streams, kept off the store,
    # must be what the store would have given back: the poll in one call (carried) against
    # the same readings one wave per call (nothing to carry), every rule and incidents on.
    # chunk=5: waves of 12 streams go chunk by chunk through the waves, the carry per chunk.
    # max_streams=12: a store with room for exactly the poll's streams; 8: no room, no carry
    # (every wave evicts streams of the next).
    from detector.core.peak import PeakConfig
    from detector.core.rules import FlatlineConfig, SustainConfig
    from detector.core.shift import ShiftConfig
    from detector.core.spike import SpikeConfig

    f = 4
    scoring = ScoringConfig(
        threshold=3.0,
        warmup=2,
        own_scale=True,
        flatline=FlatlineConfig((5,) * f),
        sustained=SustainConfig(8),
        new_range=RangeConfig(margin=0.5),
        peak=PeakConfig(),
        shift=ShiftConfig(),
        spike=SpikeConfig(),
    )
    bundle = make_bundle(features=f, hidden=16, seed=5, scoring=scoring)
    ids, ts, values = _gateway_poll(np.random.default_rng(5), streams=12, ticks=30, features=f)
    carried = Engine(bundle, max_streams=max_streams, max_gap_ms=3_600_000, chunk=chunk)
    got = carried.process(ids, ts, values, now_ms=0)

    alone = Engine(bundle, max_streams=max_streams, max_gap_ms=3_600_000, chunk=chunk)
    waves = split_waves(ids)
    assert waves is not None and len(waves) == 30
    keys = ("score", "raw", "likelihood", "anomalous", "rules", "expected", "errors")
    assert got.incidents is not None
    inc_keys = tuple(f.name for f in dataclasses.fields(got.incidents))
    want = {k: np.empty_like(getattr(got, k)) for k in keys}
    want_inc = {k: np.empty_like(getattr(got.incidents, k)) for k in inc_keys}
    for w in waves:
        r = alone.process([ids[i] for i in w], ts[w], values[w], now_ms=0)
        assert r.incidents is not None
        for k, arr in want.items():
            arr[w] = getattr(r, k)
        for k, arr in want_inc.items():
            arr[w] = getattr(r.incidents, k)
    for k, arr in want.items():
        assert np.array_equal(getattr(got, k), arr, equal_nan=True), k
    for k, arr in want_inc.items():
        assert np.array_equal(getattr(got.incidents, k), arr, equal_nan=True), k
    assert got.anomalous.any() and got.incidents.resolved.any()
    if max_streams >= 12:  # the gap mid-poll resets s3's state
        assert got.resets == 1 and not got.evicted
    else:  # 12 streams in 8 slots: each wave evicts, and s3 comes back fresh, not reset
        assert len(got.evicted) > 8
    names = [f"s{s}" for s in range(12)]
    a, b = carried.store.snapshot(names), alone.store.snapshot(names)
    for k in ("h", "c", "stats"):
        assert torch.equal(getattr(a, k).nan_to_num(), getattr(b, k).nan_to_num()), k


def test_a_new_scaler_converts_what_the_rows_keep_in_its_units() -> None:
    """A retrained model keeps the streams' state but scales readings otherwise: every
    level, change and spread the rows keep in scaler units is converted, so it names the
    same raw values after the swap (unconverted, the shift rule, the error's expectation
    and the incidents' hold read a jump on every stream), and a sensor stuck across the
    swap stays stuck."""
    f, streams = 2, 3
    scoring = ScoringConfig(
        threshold=float("inf"),
        own_scale=True,
        flatline=FlatlineConfig((50, 50)),
        shift=ShiftConfig(prior=(0.1, 0.1), threshold=100.0),
        sustained=SustainConfig(5, (0.1, 0.1), 100.0, own=True),
    )
    was, now = Scaler((1.0, -2.0), (0.5, 3.0)), Scaler((3.7, 1.1), (0.61, 2.3))
    eng = Engine(make_bundle(features=f, scoring=scoring, scaler=was), max_streams=streams)
    ids = [f"s{i}" for i in range(streams)]
    rng = np.random.default_rng(0)
    stuck = np.float32(1.2345678)

    def step(t: int) -> None:
        v = rng.normal(2.0, 1.0, (streams, f)).astype(np.float32)
        v[0, 0] = stuck if t >= 280 else v[0, 0]
        eng.process(ids, np.full(streams, T0 + 60_000 * t), v, now_ms=0)

    for t in range(300):
        step(t)
    slots = torch.from_numpy(eng.store.live_slots())
    before = LAYOUT.split(eng.store.stats[slots].clone(), f)
    assert eng.swap(make_bundle(features=f, scoring=scoring, scaler=now, version=2))
    after = LAYOUT.split(eng.store.stats[slots], f)

    def raw(x: torch.Tensor, s: Scaler) -> torch.Tensor:
        k = x.shape[1] // f
        return x * torch.tensor(s.std).repeat(k) + torch.tensor(s.mean).repeat(k)

    for part in ("x_prev", "last_obs", "shift_fast", "shift_slow", "diff_last"):
        torch.testing.assert_close(raw(getattr(after, part), now), raw(getattr(before, part), was))
    hold = [b.split(f, dim=1) for b in (before.incident_hold, after.incident_hold)]
    for k in (0, 1):  # the recent level and the reference
        torch.testing.assert_close(raw(hold[1][k], now), raw(hold[0][k], was))
    a = torch.tensor(was.std) / torch.tensor(now.std)
    torch.testing.assert_close(hold[1][2], hold[0][2] * a * a)  # the variance
    torch.testing.assert_close(after.diff_ms, before.diff_ms * torch.cat([a, a]) ** 2)
    # The stream's own spreads were of the old model's errors: from the fleet's again.
    for part in ("own_n", "own_ms", "drift_n", "drift_ms"):
        assert (getattr(after, part) == 0).all()
    step(300)
    repeats = LAYOUT.split(eng.store.stats[slots], f).repeats
    assert repeats[0, 0] == before.repeats[0, 0] + 1  # still stuck
