"""The warm-up: readings after a cold start before any decision.

It is the first position from which the cold streams' median error stays within
``WARM_RATIO`` of their steady median. A new stream, an evicted one that returns and a gap
reset are cold starts: the warm-up keeps the state's first, untrained guesses from opening
incidents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from detector.core.model import ReconstructionLSTM
from detector.core.scoring import Scaler, ScoringConfig
from training.calibrate import ERRORS_ONLY, run_engine
from training.data import StreamSeries

__all__ = ["MAX_WARMUP", "WARM_RATIO", "choose_warmup"]

WARM_RATIO = 1.25  # cold streams' median error within this of the steady one: warm
MAX_WARMUP = 300


def choose_warmup(
    module: ReconstructionLSTM,
    scaler: Scaler,
    features: Sequence[str],
    series: Sequence[StreamSeries],
    scoring: ScoringConfig,
    device: str = "cpu",
) -> int:
    """Readings after a cold start before the state's errors are as small as a warm one's.

    The same readings are scored twice: by streams started at their first reading (warm by
    then) and by streams started ``offset`` readings later (cold). The warm-up is the first
    position after which the cold errors' median stays within ``WARM_RATIO`` of the warm
    ones' — a comparison of the same readings, so a cycle the streams share does not read
    as a cold start.
    """
    offset = min(2 * MAX_WARMUP, min(len(s) for s in series) // 2)
    if offset < 20:
        return scoring.warmup
    n = min(MAX_WARMUP, offset)
    # Only the raw errors of readings up to offset + n count: later readings and the rules
    # (nothing is protected, so they change no state) would only cost time.
    early = [
        StreamSeries(s.stream_id, s.ts_ms[: offset + n], s.values[: offset + n]) for s in series
    ]
    late = [StreamSeries(s.stream_id, s.ts_ms[offset:], s.values[offset:]) for s in early]
    never = replace(ERRORS_ONLY, whiten=scoring.whiten, context=scoring.context, held=scoring.held)
    warm = run_engine(
        module, scaler, features, early, never, collect_from=[offset] * len(early), device=device
    )
    cold = run_engine(
        module, scaler, features, late, never, collect_from=[0] * len(late), device=device
    )
    ratio = np.ones(n)
    for k in range(n):
        a, b = warm.raw[warm.index == offset + k], cold.raw[cold.index == k]
        ok = np.isfinite(a) & np.isfinite(b) & (a > 0)
        if ok.any():
            ratio[k] = float(np.median(b[ok]) / np.median(a[ok]))
    smooth = np.convolve(ratio, np.ones(5) / 5, mode="same")
    above = np.flatnonzero(smooth > WARM_RATIO)
    return max(scoring.warmup, int(above.max()) + 1 if above.size else 0)
