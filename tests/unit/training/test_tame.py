"""The trainer reads channels with a heavy tail through a pseudo-log (training.tame)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from detector.artifacts import load_current
from detector.sandbox.simulation import FleetSpec
from training.data import StreamSeries, from_simulation
from training.fit import FitConfig
from training.pipeline import train_and_publish
from training.tame import pseudo_log_scales

TINY = FitConfig(hidden=8, layers=1, window=16, batch_size=4, epochs=2, device="cpu", threads=1)
SPEC = FleetSpec(streams=8, anomaly_rate=0.0, seed=12)
FEATURES = (*SPEC.features, "requests", "latency")


def _with_rates(series: list[StreamSeries]) -> list[StreamSeries]:
    """Each stream plus a request rate (lognormal) and a latency (lognormal plus a floor)."""
    rng = np.random.default_rng(3)
    out = []
    for s in series:
        n = len(s)
        extra = np.column_stack([rng.lognormal(2.0, 1.0, n), 20.0 + rng.lognormal(1.0, 1.2, n)])
        out.append(StreamSeries(s.stream_id, s.ts_ms, np.column_stack([s.values, extra])))
    return out


def test_rates_and_latencies_are_read_through_a_pseudo_log_the_simulated_channels_are_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    series = _with_rates(from_simulation(SPEC, 600))
    f = len(SPEC.features)
    with caplog.at_level(logging.WARNING):
        scales = pseudo_log_scales(series, FEATURES)
    n = len(FEATURES)
    assert [i for i, c in enumerate(scales[n:]) if c] == [f, f + 1]
    assert 6 < scales[f] < 9 and 20 < scales[f + 1] < 25  # the median rate, e^2; the latency's
    assert "requests m=" in caplog.text and "heavy tail" in caplog.text
    assert pseudo_log_scales(series, FEATURES, skip=(f,))[n + f] == 0.0  # context, held: as is
    one = [StreamSeries(s.stream_id, s.ts_ms, s.values[:, f : f + 1]) for s in series]
    assert pseudo_log_scales(one, ("requests",)) == ()  # a single channel's tail is its own


def test_a_symmetric_heavy_tail_is_read_through_it_too_a_gaussian_or_a_cycle_is_not() -> None:
    rng = np.random.default_rng(4)
    series = []
    for k in range(8):
        t = np.arange(2000)
        values = np.column_stack(
            [
                10 + 3 * rng.standard_t(3, 2000),  # a vibration's residual: excess kurtosis >> 6
                10 + 3 * rng.standard_normal(2000),
                np.sin(2 * np.pi * t / 288) + 0.1 * rng.standard_normal(2000),
            ]
        )
        series.append(StreamSeries(f"s{k}", t.astype(np.int64) * 60_000, values))
    scales = pseudo_log_scales(series, ("vibration", "noise", "cycle"))
    assert len(scales) == 6 and scales[3] > 0 and scales[4:] == (0.0, 0.0), scales
    assert 9 < scales[0] < 11  # centred on the median


def test_a_trained_models_thresholds_are_not_set_by_the_rates(tmp_path: Path) -> None:
    series = _with_rates(from_simulation(SPEC, 600))
    f = len(SPEC.features)
    version = train_and_publish(series, FEATURES, tmp_path, TINY, cross_fit=False)
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["format"] >= 4 and manifest["scoring"]["pseudo_log"][len(FEATURES) + f] > 0
    served = load_current(tmp_path)
    sc = served.scoring
    assert sc.peak is not None and sc.difference is not None
    assert sc.threshold < 10 and sc.peak.threshold < 10 and sc.difference.threshold < 10, sc
    # A retrain on other history (other medians) keeps the served units: no stream restarts
    train_and_publish(series[2:], FEATURES, tmp_path, TINY, cross_fit=False)
    again = load_current(tmp_path)
    assert again.version == 2 and again.scoring.pseudo_log == sc.pseudo_log
    assert served.state_compatible(again)
