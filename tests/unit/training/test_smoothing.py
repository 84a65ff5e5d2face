"""The smoothed level persistence starts from: chosen from the history, carried as live."""

from __future__ import annotations

import numpy as np
import torch

from detector.core.model import ModelConfig, ReconstructionLSTM
from detector.core.scoring import Scaler
from training.batches import choose_smoothing, smoothed_levels
from training.data import StreamSeries


def _series(values: np.ndarray) -> list[StreamSeries]:
    ts = np.arange(values.shape[1], dtype=np.int64) * 60_000
    return [StreamSeries(f"s{i}", ts, v) for i, v in enumerate(values)]


def test_white_noise_around_a_level_is_smoothed_and_a_random_walk_is_not() -> None:
    rng = np.random.default_rng(0)
    noisy = 5.0 + rng.standard_normal((4, 2000, 1))  # the last reading carries its noise
    walk = np.cumsum(rng.standard_normal((4, 2000, 1)), axis=1)  # the last reading is best
    values = np.concatenate([noisy, walk], axis=2)
    series = _series(values)
    alpha = choose_smoothing(series, [1600] * 4, Scaler((5.0, 0.0), (1.0, 10.0)))
    assert alpha[0] <= 0.25 and alpha[1] == 1.0


def test_only_random_walks_need_no_smoothing_at_all() -> None:
    rng = np.random.default_rng(1)
    series = _series(np.cumsum(rng.standard_normal((3, 500, 2)), axis=1))
    assert choose_smoothing(series, [400] * 3, Scaler((0.0, 0.0), (1.0, 1.0))) == ()


def test_training_levels_are_the_model_s_own() -> None:
    # The trainer precomputes the levels; the module's teacher-forced pass computes them
    # step by step as the engine does: the same numbers.
    fed = np.random.default_rng(2).standard_normal((30, 3)).astype(np.float32)
    m = ReconstructionLSTM(ModelConfig(3, 8, 1, (), smoothing=(0.3, 1.0, 0.6)))
    want = m.levels(torch.from_numpy(fed).unsqueeze(0))[0].numpy()
    np.testing.assert_allclose(smoothed_levels(fed, (0.3, 1.0, 0.6)), want, rtol=1e-6, atol=1e-6)
    plain = ReconstructionLSTM(ModelConfig(3, 8, 1, ()))
    np.testing.assert_array_equal(
        smoothed_levels(fed, ()), plain.levels(torch.from_numpy(fed).unsqueeze(0))[0].numpy()
    )
