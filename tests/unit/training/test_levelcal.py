"""The level rule's calibration: its prior, its scales and its threshold on clean history."""

from __future__ import annotations

import math

import numpy as np

from detector.core.level import SPANS, LevelConfig
from detector.core.scoring import Scaler, ScoringConfig
from training.data import StreamSeries
from training.levelcal import calibrate_level, level_statistic


def _fleet(streams: int = 6, n: int = 2000) -> list[StreamSeries]:
    """Three white channels; the third also follows a cycle of its own (400 readings, a
    random phase per stream) that no other channel explains."""
    rng = np.random.default_rng(0)
    t = np.arange(n)
    out = []
    for i in range(streams):
        v = rng.normal(0, 1, (n, 3))
        v[:, 2] += 1.5 * np.sin(2 * math.pi * t / 400 + rng.uniform(0, 2 * math.pi))
        out.append(StreamSeries(f"s{i}", 1_795_219_200_000 + 60_000 * t, v.astype(np.float32)))
    return out


def test_a_cycle_no_other_channel_explains_widens_that_channels_long_spans_only() -> None:
    """Its slow mean is no step: its long spans are judged in their (wider) spread, the
    white channels' in about their white-noise spread, and the clean history replayed
    cold reaches the threshold about as rarely as asked for."""
    fleet, scaler = _fleet(), Scaler((0.0,) * 3, (1.0,) * 3)
    scoring = ScoringConfig(warmup=10, level=LevelConfig())
    cfg = calibrate_level(fleet, scaler, scoring, 1e-4, 3.5)
    assert cfg is not None and len(cfg.prior) == 3 and cfg.threshold >= 2.0
    spread = np.array(cfg.spread).reshape(len(SPANS), 3)
    assert ((spread[:, :2] > 0.75) & (spread[:, :2] < 1.1)).all()  # white: about 1
    assert spread[-1, 2] > 2.5 * spread[-1, :2].max()  # the cycle's channel, longest span
    assert spread[0, 2] < 1.1  # one reading's innovation: white there too
    z = np.concatenate(level_statistic(fleet, scaler, cfg, warmup=10))
    assert (z >= cfg.threshold).mean() < 1e-3
