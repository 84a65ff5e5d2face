"""Factories for unit tests: small models and bundles built in one call, no hidden state."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from detector.core.bundle import ModelBundle
from detector.core.model import ModelConfig, ReconstructionLSTM
from detector.core.scoring import Scaler, ScoringConfig
from training.data import StreamSeries


def make_bundle(
    features: int = 3,
    hidden: int = 16,
    layers: int = 2,
    periods_s: tuple[float, ...] = (86_400.0,),
    seed: int = 0,
    scoring: ScoringConfig | None = None,
    name: str = "test",
    version: int = 1,
    scaler: Scaler | None = None,
    nowcast: bool = False,
    smoothing: tuple[float, ...] = (),
) -> ModelBundle:
    """A randomly initialised model bundle (deterministic for a seed)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(features, hidden, layers, periods_s, nowcast=nowcast, smoothing=smoothing)
    module = ReconstructionLSTM(cfg).eval()
    if module.cross is not None:  # trained cross gains are not zero: exercise them
        with torch.no_grad():
            module.cross.weight.normal_(0.0, 0.1)
            module.cross.bias.normal_(0.0, 0.1)
    return ModelBundle(
        name=name,
        version=version,
        features=tuple(f"f{i}" for i in range(features)),
        module=module,
        scaler=scaler or Scaler((0.0,) * features, (1.0,) * features),
        scoring=scoring or ScoringConfig(protect_state=False),
    )


def clean_series(streams: int, n: int = 1500, seed: int = 1) -> list[StreamSeries]:
    """``streams`` clean streams of ``n`` readings a minute apart, two channels of white
    noise (sd 0.3)."""
    rng = np.random.default_rng(seed)
    t0 = 1_795_219_200_000
    return [
        StreamSeries(
            f"s{i}",
            t0 + 60_000 * np.arange(n, dtype=np.int64),
            (rng.standard_normal((n, 2)) * 0.3).astype(np.float32),
        )
        for i in range(streams)
    ]


def with_channels(
    series: list[StreamSeries], extra: Callable[[int], np.ndarray]
) -> list[StreamSeries]:
    """Each stream with the columns ``extra(n)`` (n, k) appended, stream by stream."""
    return [
        StreamSeries(
            s.stream_id,
            s.ts_ms,
            np.concatenate([s.values, extra(len(s))], axis=1).astype(np.float32),
        )
        for s in series
    ]
