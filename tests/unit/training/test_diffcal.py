"""The difference rule's calibration: a channel with heavier tails gets its own scale."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from detector.core.difference import DifferenceConfig
from detector.core.scoring import ScoringConfig
from tests.unit.factories import with_channels
from training.batches import fit_scaler
from training.data import StreamSeries
from training.diffcal import calibrate_difference, difference_statistic
from training.fleet.styles import generate
from training.tail import tail_threshold

RATE, FLOOR, WARMUP = 1e-4, 3.5, 20


def _with_heavy_tails(series: list[StreamSeries], rng: np.random.Generator) -> list[StreamSeries]:
    """Each stream with four iid Student-t channels appended (a vibration's residual; the
    trainer would read them through the pseudo-log, this is the rule's calibration alone)."""
    return with_channels(series, lambda n: 10 + 3 * rng.standard_t(3, (n, 4)))


def test_heavy_tailed_channels_do_not_set_the_threshold_for_the_others() -> None:
    fleet = generate("daily", seed=7, streams=12, history=2000, evaluation=1500)
    rng = np.random.default_rng(7)
    history, anomalous = (
        _with_heavy_tails(fleet.history, rng),
        _with_heavy_tails(fleet.anomalous, rng),
    )
    scaler = fit_scaler(history, [len(s) for s in history], 1e-6)
    scoring = ScoringConfig(warmup=WARMUP, difference=DifferenceConfig())
    cfg = calibrate_difference(history, scaler, scoring, RATE, FLOOR)
    assert cfg is not None
    own, extra = [*cfg.scale[:4], *cfg.scale[8:12]], [*cfg.scale[4:8], *cfg.scale[12:]]
    assert max(own) < 1.5 < 2.0 < min(extra), cfg.scale  # d then m of each channel
    plain = replace(cfg, scale=())
    z = np.concatenate(difference_statistic(history, scaler, plain, WARMUP)).astype(np.float32)
    plain = replace(plain, threshold=max(FLOOR, tail_threshold(z[np.isfinite(z)], RATE)))
    assert cfg.threshold < plain.threshold / 2, (cfg.threshold, plain.threshold)
    caught = {}
    for name, c in (("scaled", cfg), ("plain", plain)):
        stat = difference_statistic(anomalous, scaler, c, WARMUP)
        found = 0
        for lab in fleet.labels:
            i = next(j for j, s in enumerate(anomalous) if s.stream_id == lab.stream_id)
            inside = (anomalous[i].ts_ms >= lab.start_ms) & (anomalous[i].ts_ms <= lab.end_ms)
            found += bool(stat[i][inside].max() >= c.threshold)
        caught[name] = found
    assert caught["scaled"] >= caught["plain"] + 5, caught
