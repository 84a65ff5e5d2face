"""Training data as tensors: each stream prepared once, then padded into batches of streams.

A prepared stream is the model's inputs (scaled values, forward-filled, with calendar
features), its targets (scaled values, ``nan`` where missing) and which steps are for
training (the rest is the held-out tail). :func:`pad_batches` groups prepared streams in
a given order; :func:`training.fit.fit` picks that order (similar lengths together).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from detector.core.model import calendar_features
from detector.core.scoring import Scaler
from training.data import StreamSeries

__all__ = ["PaddedBatch", "PreparedStream", "forward_fill", "pad_batches"]


def forward_fill(x: np.ndarray) -> np.ndarray:
    """Forward-fill nan along axis 0 of ``x`` (T, F); leading nan become 0 (the mean)."""
    t = np.arange(len(x))[:, None]
    idx = np.where(np.isnan(x), 0, t)
    np.maximum.accumulate(idx, axis=0, out=idx)
    filled = np.take_along_axis(x, idx, axis=0)
    return np.asarray(np.nan_to_num(filled, nan=0.0), dtype=np.float32)


class PreparedStream:
    """One stream, prepared once: inputs (T, I), targets (T, F) nan = missing, train mask (T,).

    ``k`` is where the stream's held-out tail starts.
    """

    def __init__(self, s: StreamSeries, scaler: Scaler, periods: tuple[float, ...], k: int):
        mean = np.asarray(scaler.mean, np.float32)
        std = np.asarray(scaler.std, np.float32)
        z = ((s.values - mean) / std).astype(np.float32)  # (T, F) scaler units
        cal = calendar_features(torch.from_numpy(np.ascontiguousarray(s.ts_ms)), periods)
        self.inputs = torch.cat([torch.from_numpy(forward_fill(z)), cal], dim=1)
        self.targets = torch.from_numpy(z)
        self.train = torch.arange(len(s)) < k


class PaddedBatch:
    """Streams padded to a common length T: inputs (B, T, I), targets (B, T, F), train (B, T).

    Padding has nan targets and is neither trained nor validated on.
    """

    def __init__(self, streams: Sequence[PreparedStream], device: torch.device) -> None:
        pad = torch.nn.utils.rnn.pad_sequence
        self.inputs = pad([s.inputs for s in streams], batch_first=True).to(device)
        self.targets = pad(
            [s.targets for s in streams], batch_first=True, padding_value=math.nan
        ).to(device)
        self.train = pad([s.train for s in streams], batch_first=True).to(device)
        self.valid = pad([~s.train for s in streams], batch_first=True).to(device)
        self.length = self.inputs.shape[1]


def pad_batches(
    streams: Sequence[PreparedStream], batch_size: int, device: torch.device
) -> list[PaddedBatch]:
    """``streams`` cut, in their order, into batches of ``batch_size`` (the last may be smaller)."""
    return [
        PaddedBatch(streams[b0 : b0 + batch_size], device)
        for b0 in range(0, len(streams), batch_size)
    ]
