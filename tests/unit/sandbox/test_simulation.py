"""The synthetic fleet: deterministic, realistic, and its anomalies are where the labels say."""

from __future__ import annotations

import doctest
import itertools
from datetime import datetime
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.core.schema import FeatureSpec, Reading, decode_message
from detector.sandbox import simulation
from detector.sandbox.messages import iter_readings, read_labels, to_json_messages, write_labels
from detector.sandbox.simulation import (
    ANOMALY_KINDS,
    Anomaly,
    Block,
    Fleet,
    FleetSpec,
)

FEATURES = FleetSpec().features


def make_spec(**overrides: object) -> FleetSpec:
    args: dict[str, object] = {"streams": 8, "seed": 11, "period_s": 60.0}
    args.update(overrides)
    return FleetSpec(**args)  # type: ignore[arg-type]


def generate(spec: FleetSpec, ticks: int) -> tuple[Block, list[Anomaly]]:
    fleet = Fleet(spec)
    return fleet.step(ticks), fleet.anomalies


def rows_of(block: Block, a: Anomaly) -> tuple[int, np.ndarray]:
    """(stream index, tick rows) a label covers in a block."""
    s = block.stream_ids.index(a.stream_id)
    ts = block.ts_ms[:, s]
    return s, np.flatnonzero((ts >= a.start_ms) & (ts <= a.end_ms))


def test_docstring_example_runs() -> None:
    assert doctest.testmod(simulation, raise_on_error=True).attempted > 0


def test_same_seed_gives_identical_data_and_labels() -> None:
    spec = make_spec(anomaly_rate=10)
    a, la = generate(spec, 1500)
    b, lb = generate(spec, 1500)
    assert np.array_equal(a.values, b.values)
    assert np.array_equal(a.ts_ms, b.ts_ms)
    assert la == lb and len(la) > 0


def test_different_seeds_give_different_data() -> None:
    a, la = generate(make_spec(seed=1, anomaly_rate=10), 1500)
    b, lb = generate(make_spec(seed=2, anomaly_rate=10), 1500)
    assert not np.allclose(a.values, b.values)
    assert la != lb


@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(1, 799), max_size=5, unique=True))
def test_splitting_into_blocks_does_not_change_the_data(cuts: list[int]) -> None:
    spec = make_spec(streams=5, anomaly_rate=20, warmup_ticks=50)
    whole, labels = generate(spec, 800)
    fleet = Fleet(spec)
    bounds = [0, *sorted(cuts), 800]
    parts = [fleet.step(hi - lo) for lo, hi in itertools.pairwise(bounds)]
    assert np.allclose(np.concatenate([p.values for p in parts]), whole.values, rtol=1e-9)
    assert np.array_equal(np.concatenate([p.ts_ms for p in parts]), whole.ts_ms)
    assert np.array_equal(np.concatenate([p.anomalous for p in parts]), whole.anomalous)
    assert fleet.anomalies == labels


def test_clean_fleet_equals_anomalous_fleet_outside_labels() -> None:
    spec = make_spec(anomaly_rate=20)
    dirty, labels = generate(spec, 2000)
    clean, none = generate(spec.clean(), 2000)
    assert none == [] and not clean.anomalous.any()
    inside = np.zeros_like(dirty.anomalous)
    for a in labels:
        s, rows = rows_of(dirty, a)
        inside[rows, s] = True
    assert np.array_equal(inside, dirty.anomalous)
    assert np.array_equal(dirty.values[~inside], clean.values[~inside])
    assert not np.array_equal(dirty.values[inside], clean.values[inside])


def test_timestamps_are_in_time_order_and_streams_keep_their_period() -> None:
    spec = make_spec(streams=7, period_s=2.5, start_ms=1_000)
    block = Fleet(spec).step(30)
    flat = block.ts_ms.ravel()
    assert np.all(np.diff(flat) >= 0)
    assert np.all(np.diff(block.ts_ms, axis=0) == 2500)
    assert block.ts_ms[0, 0] == 1_000
    assert block.stream_ids[3] == "pump-00003"


def test_channels_follow_the_load_as_designed() -> None:
    spec = make_spec(streams=10, anomaly_rate=0)
    block = Fleet(spec).step(2880)  # two days at one reading a minute

    def corr(feature: str) -> float:
        j = FEATURES.index(feature)
        return float(
            np.mean([np.corrcoef(block.values[:, s, j], block.load[:, s])[0, 1] for s in range(10)])
        )

    assert corr("current") > 0.95
    assert corr("temp") > 0.85  # lagged, still strongly coupled
    assert corr("pressure") < -0.9  # falls as load rises
    assert 0.3 < corr("vibration") < corr("temp")  # noisy
    # Channels are correlated with each other through the load.
    cur, temp = FEATURES.index("current"), FEATURES.index("temp")
    assert np.corrcoef(block.values[:, 0, cur], block.values[:, 0, temp])[0, 1] > 0.8


def kind_fixture(kind: str) -> tuple[Block, Block, list[Anomaly]]:
    spec = make_spec(streams=20, anomaly_rate=20, anomaly_kinds=(kind,), warmup_ticks=50)
    dirty, labels = generate(spec, 1500)
    clean, _ = generate(spec.clean(), 1500)
    complete = [a for a in labels if a.end_ms <= dirty.ts_ms[-1, -1]]
    assert len(complete) >= 10 and {a.kind for a in labels} == {kind}
    return dirty, clean, complete


def noise_sd(clean: Block, s: int, j: int) -> float:
    return float(np.std(clean.values[:, s, j] - clean.expected[:, s, j]))


def step_sigma(block: Block, s: int, j: int) -> float:
    """The fleet's unit of anomaly size for one channel (same spec, same parameters)."""
    spec = make_spec(streams=20, anomaly_rate=20, anomaly_kinds=("spike",), warmup_ticks=50)
    assert block.stream_ids == Fleet(spec).stream_ids
    return float(Fleet(spec).step_sigma[s, j])


def test_spike_is_over_five_sigma_of_the_clean_residual() -> None:
    dirty, clean, labels = kind_fixture("spike")
    for a in labels:
        s, rows = rows_of(dirty, a)
        assert len(rows) == 1
        for name in a.features:
            j = FEATURES.index(name)
            jump = abs(dirty.values[rows, s, j] - clean.values[rows, s, j])
            assert jump.item() > 5 * noise_sd(clean, s, j)


def test_level_shift_moves_the_channel_by_a_constant_four_to_six_sigma() -> None:
    dirty, clean, labels = kind_fixture("level_shift")
    for a in labels:
        s, rows = rows_of(dirty, a)
        assert 20 <= len(rows) <= 60
        for name in a.features:
            j = FEATURES.index(name)
            shift = dirty.values[rows, s, j] - clean.values[rows, s, j]
            assert np.allclose(shift, shift[0])
            unit = step_sigma(dirty, s, j)
            assert unit >= 0.95 * noise_sd(clean, s, j)  # noise plus the load innovation
            assert 3.5 < abs(shift[0]) / unit < 6.5


def test_drift_ramps_up_to_at_least_five_sigma() -> None:
    dirty, clean, labels = kind_fixture("drift")
    for a in labels:
        s, rows = rows_of(dirty, a)
        j = FEATURES.index(a.features[0])
        ramp = np.abs(dirty.values[rows, s, j] - clean.values[rows, s, j])
        assert np.all(np.diff(ramp) > 0)
        assert ramp[-1] > 5 * noise_sd(clean, s, j)


def test_stuck_sensor_repeats_one_value_while_the_signal_moves() -> None:
    dirty, clean, labels = kind_fixture("stuck")
    for a in labels:
        s, rows = rows_of(dirty, a)
        assert len(rows) >= 30
        j = FEATURES.index(a.features[0])
        assert np.ptp(dirty.values[rows, s, j]) == 0
        assert np.ptp(clean.values[rows, s, j]) > 0


def test_noise_burst_multiplies_the_noise() -> None:
    dirty, clean, labels = kind_fixture("noise_burst")
    for a in labels:
        s, rows = rows_of(dirty, a)
        for name in a.features:
            j = FEATURES.index(name)
            burst = np.std(dirty.values[rows, s, j] - clean.expected[rows, s, j])
            assert burst > 3 * noise_sd(clean, s, j)


def test_broken_correlation_decouples_the_channel_but_keeps_its_range() -> None:
    dirty, clean, labels = kind_fixture("broken_correlation")
    broken, healthy, spread = [], [], []
    for a in labels:
        s, rows = rows_of(dirty, a)
        j = FEATURES.index(a.features[0])
        dload = np.diff(dirty.load[rows, s])
        broken.append(np.corrcoef(np.diff(dirty.values[rows, s, j]), dload)[0, 1])
        healthy.append(np.corrcoef(np.diff(clean.values[rows, s, j]), dload)[0, 1])
        lo, hi = np.percentile(clean.values[:, s, j], [0.5, 99.5])
        spread.append(np.mean((dirty.values[rows, s, j] >= lo) & (dirty.values[rows, s, j] <= hi)))
    assert np.mean(np.abs(healthy)) > 0.4
    assert np.mean(np.abs(broken)) < 0.2
    # Per-channel thresholds see nothing: values stay within the normal range.
    assert np.mean(spread) > 0.9


@pytest.mark.parametrize("start_tick", [0, 5000])
def test_no_anomalies_during_warmup(start_tick: int) -> None:
    spec = make_spec(streams=30, anomaly_rate=40, warmup_ticks=200)
    fleet = Fleet(spec, start_tick=start_tick)
    block = fleet.step(600)
    assert not block.anomalous[:200].any()
    assert block.anomalous[200:].any()
    first_allowed = spec.start_ms + (start_tick + 200) * spec.period_ms
    assert min(a.start_ms for a in fleet.anomalies) >= first_allowed


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31), rate=st.floats(1, 40))
def test_anomalies_never_overlap_within_a_stream(seed: int, rate: float) -> None:
    fleet = Fleet(make_spec(streams=4, seed=seed, anomaly_rate=rate, warmup_ticks=10))
    fleet.step(2000)
    by_stream: dict[str, list[Anomaly]] = {}
    for a in fleet.anomalies:
        assert a.start_ms <= a.end_ms
        by_stream.setdefault(a.stream_id, []).append(a)
    for anomalies in by_stream.values():
        for prev, nxt in itertools.pairwise(anomalies):
            assert prev.end_ms < nxt.start_ms


def test_anomaly_rate_is_per_thousand_readings() -> None:
    spec = make_spec(streams=100, anomaly_rate=4, warmup_ticks=0)
    fleet = Fleet(spec)
    fleet.step(2000)
    per_thousand = len(fleet.anomalies) / (100 * 2000 / 1000)
    assert 3.0 < per_thousand < 5.0


def test_held_out_continuation_keeps_the_streams_with_fresh_noise() -> None:
    spec = make_spec(anomaly_rate=0)
    first = Fleet(spec).step(1440)
    later = Fleet(spec, start_tick=1440).step(1440)
    assert later.ts_ms[0, 0] == first.ts_ms[-1, 0] + spec.period_ms
    # Same stream levels (a day each, so the daily cycle averages out) ...
    assert np.allclose(first.values.mean(axis=0), later.values.mean(axis=0), rtol=0.05, atol=0.01)
    # ... but not a copy of the first segment.
    assert not np.allclose(first.values, later.values)
    other = Fleet(make_spec(anomaly_rate=0, seed=12), start_tick=1440).step(1440)
    assert not np.allclose(other.values.mean(axis=0), later.values.mean(axis=0), rtol=0.05)


anomalies = st.builds(
    Anomaly,
    stream_id=st.text(min_size=1, max_size=20),
    kind=st.sampled_from(ANOMALY_KINDS),
    start_ms=st.integers(0, 4_000_000_000_000),
    end_ms=st.integers(0, 4_000_000_000_000),
    features=st.lists(st.sampled_from(FEATURES), max_size=4, unique=True).map(tuple),
)


@settings(max_examples=25, deadline=None)
@given(labels=st.lists(anomalies, max_size=10))
def test_labels_round_trip(tmp_path_factory: pytest.TempPathFactory, labels: list[Anomaly]) -> None:
    path = tmp_path_factory.mktemp("labels") / "labels.jsonl"
    write_labels(path, labels)
    assert read_labels(path) == labels


def test_label_file_is_json_lines_with_iso_timestamps(tmp_path: Path) -> None:
    fleet = Fleet(make_spec(anomaly_rate=20, warmup_ticks=0))
    fleet.step(500)
    path = tmp_path / "labels.jsonl"
    write_labels(path, fleet.anomalies)
    lines = path.read_bytes().splitlines()
    assert len(lines) == len(fleet.anomalies) > 0
    row = orjson.loads(lines[0])
    assert set(row) == {"stream_id", "kind", "start_ts", "end_ts", "features"}
    assert row["start_ts"].endswith("Z")
    first = fleet.anomalies[0]
    assert datetime.fromisoformat(row["start_ts"]).timestamp() * 1000 == first.start_ms
    assert read_labels(path) == fleet.anomalies


def decode_ts(ts: str | int) -> int:
    if isinstance(ts, int):
        return ts
    return round(datetime.fromisoformat(ts).timestamp() * 1000)


@settings(max_examples=20, deadline=None)
@given(
    streams=st.integers(1, 4),
    ticks=st.integers(1, 12),
    batch_size=st.integers(1, 5),
    ts_format=st.sampled_from(["iso", "ms"]),
)
def test_json_messages_decode_to_the_block(
    streams: int, ticks: int, batch_size: int, ts_format: str
) -> None:
    spec = make_spec(streams=streams, start_ms=1_795_219_200_123)
    block = Fleet(spec).step(ticks)
    messages = to_json_messages(block, batch_size, ts_format=ts_format)  # type: ignore[arg-type]
    seen: dict[str, list[tuple[int, tuple[float, ...]]]] = {sid: [] for sid in block.stream_ids}
    for key, value in messages:
        decoded = orjson.loads(value)
        readings = decoded if isinstance(decoded, list) else [decoded]
        assert batch_size > 1 or isinstance(decoded, dict)
        assert 1 <= len(readings) <= batch_size
        for r in readings:
            assert key == r["stream_id"].encode()  # one stream per message, keyed by it
            values = tuple(r["values"][name] for name in spec.features)
            seen[r["stream_id"]].append((decode_ts(r["ts"]), values))
    for s, sid in enumerate(block.stream_ids):
        expected = [
            (int(t), tuple(v))
            for t, v in zip(block.ts_ms[:, s], block.values[:, s].tolist(), strict=True)
        ]
        assert seen[sid] == expected  # same values, timestamps and per-stream order


@pytest.mark.parametrize("batch_size", [1, 16])
def test_json_messages_pass_the_detectors_decoder(batch_size: int) -> None:
    spec = make_spec(streams=3)
    block = Fleet(spec).step(20)
    decoded = [
        r
        for key, value in to_json_messages(block, batch_size)
        for r in decode_message(value, key, FeatureSpec(spec.features))
    ]
    assert all(isinstance(r, Reading) for r in decoded)
    expected = list(iter_readings(Fleet(spec), 20))
    assert sorted(decoded) == sorted(expected)


def test_iter_readings_yields_every_reading_in_time_order() -> None:
    spec = make_spec(streams=3, anomaly_rate=0)
    readings = list(iter_readings(Fleet(spec), 40, block_ticks=7))
    block = Fleet(spec).step(40)
    assert len(readings) == block.n_readings == 120
    assert [r.ts_ms for r in readings] == block.ts_ms.ravel().tolist()
    assert readings[4].stream_id == "pump-00001"
    assert np.allclose([r.values for r in readings], block.values.reshape(120, 4))
    ids, ts, values = block.flat()  # the engine's batch layout, same order
    assert ids == [r.stream_id for r in readings]
    assert ts.tolist() == [r.ts_ms for r in readings] and values.shape == (120, 4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"streams": 0}, "streams"),
        ({"features": ()}, "features"),
        ({"features": ("a", "a")}, "features"),
        ({"period_s": 0.0}, "period_s"),
        ({"anomaly_rate": -1.0}, "anomaly_rate"),
        ({"anomaly_kinds": ("meteor",)}, "anomaly_kinds"),
    ],
)
def test_bad_spec_is_refused_with_the_field_named(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_spec(**overrides)


def test_custom_features_and_prefix() -> None:
    spec = make_spec(streams=2, features=("flow", "rpm"), prefix="fan-", anomaly_rate=0)
    block = Fleet(spec).step(5)
    assert block.values.shape == (5, 2, 2) and np.isfinite(block.values).all()
    assert block.stream_ids == ("fan-00000", "fan-00001")
