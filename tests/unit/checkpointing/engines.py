"""A small engine with a few streams of random readings, whose state the checkpoint tests
write, restore and compare."""

from __future__ import annotations

import numpy as np

from detector.core.engine import Engine
from tests.unit.factories import make_bundle


def small_engine(seed: int = 0, hidden: int = 8, max_streams: int = 1000) -> Engine:
    return Engine(
        make_bundle(features=3, hidden=hidden, layers=2, seed=seed), max_streams=max_streams
    )


def feed(eng: Engine, ids: list[str], t: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + t)
    vals = rng.normal(size=(len(ids), 3)).astype(np.float32)
    return eng.process(ids, np.full(len(ids), 1_700_000_000_000 + t * 1000), vals, now_ms=t).score
