"""The trainer reads each stream at the fleet's size where sizes spread (training.sizes)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from detector.artifacts import load_current
from detector.core.scoring import ScoringConfig
from detector.sandbox.simulation import FleetSpec
from training.data import StreamSeries, from_simulation
from training.fit import FitConfig
from training.pipeline import train_and_publish
from training.sizes import fleet_sizes, read_sized, sizes_as_served

TINY = FitConfig(hidden=8, layers=1, window=16, batch_size=4, epochs=2, device="cpu", threads=1)
SPEC = FleetSpec(streams=8, anomaly_rate=0.0, seed=12)


def _sized(series: list[StreamSeries], channels: list[int]) -> list[StreamSeries]:
    """Each stream's ``channels`` times its own factor, 1/10 to 10 (pumps in many sizes)."""
    factors = np.geomspace(0.1, 10.0, len(series))
    out = []
    for s, k in zip(series, factors, strict=True):
        v = np.array(s.values, np.float32)
        v[:, channels] *= k
        out.append(StreamSeries(s.stream_id, s.ts_ms, v))
    return out


def test_a_channel_in_many_sizes_is_read_at_the_fleets_the_others_as_they_came() -> None:
    plain = from_simulation(SPEC, 300)
    assert fleet_sizes(plain, SPEC.features) == ()  # tens of percent apart: left as they are
    f = len(SPEC.features)
    sizes = fleet_sizes(_sized(plain, [0, 2]), SPEC.features)
    assert [v > 0 for v in sizes[f:]] == [j in (0, 2) for j in range(f)]
    assert fleet_sizes(_sized(plain, [0, 2]), SPEC.features, skip=(0, 2)) == ()  # context
    assert fleet_sizes(_sized(plain[:2], [0, 2]), SPEC.features) == ()  # two streams: unsaid


def test_read_at_the_fleets_size_a_big_pump_is_the_small_one() -> None:
    small = from_simulation(SPEC, 300)[:1]
    big = [StreamSeries(small[0].stream_id, small[0].ts_ms, small[0].values * 10.0 + 50.0)]
    sizes = fleet_sizes(_sized(from_simulation(SPEC, 300), [0, 1]), SPEC.features)
    a, b = read_sized(small, sizes)[0].values, read_sized(big, sizes)[0].values
    np.testing.assert_allclose(b[1:, :2], a[1:, :2], rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(b[:, 2:], big[0].values[:, 2:])  # not sized: as it came


def test_a_retrain_keeps_the_served_sizes_and_says_when_the_channels_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    f = len(SPEC.features)
    served = ScoringConfig(sizes=(1.0,) * f + (2.0,) + (0.0,) * (f - 1))
    moved = (1.1,) * f + (2.2,) + (0.0,) * (f - 1)
    assert sizes_as_served(served, SPEC.features, moved) == served.sizes
    # another pseudo-log: the served levels and steps are in other units
    assert sizes_as_served(served, SPEC.features, moved, (0.0,) * f + (1.0,) * f) == moved
    other = (1.1,) * f + (0.0, 2.2) + (0.0,) * (f - 2)
    with caplog.at_level(logging.WARNING):
        assert sizes_as_served(served, SPEC.features, other) == other
    assert "every stream starts afresh once" in caplog.text


def test_a_fleet_of_pumps_in_many_sizes_trains_and_serves_at_the_fleets_size(
    tmp_path: Path,
) -> None:
    series = _sized(from_simulation(SPEC, 600), list(range(len(SPEC.features))))
    version = train_and_publish(series, SPEC.features, tmp_path, TINY, cross_fit=False)
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["format"] == 7 and any(manifest["scoring"]["sizes"])
    served = load_current(tmp_path)
    assert served.scoring.threshold < 10, served.scoring
    train_and_publish(series[1:], SPEC.features, tmp_path, TINY, cross_fit=False)
    again = load_current(tmp_path)
    assert again.scoring.sizes == served.scoring.sizes and served.state_compatible(again)


def test_a_first_model_warns_of_no_restart(caplog: pytest.LogCaptureFixture) -> None:
    # with nothing served, a channel read through a pseudo-log was announced as a change
    # "from the served model's (none)" after which "every stream starts afresh"
    from training.tame import as_served

    parts = (0.0, 5.0, 0.0, 2.0)
    assert as_served(None, ("x", "y"), parts) == parts
    assert "starts afresh" not in caplog.text
