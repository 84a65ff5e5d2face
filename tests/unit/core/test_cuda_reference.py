"""The engine on each device against an independent float64 reference: ``nn.LSTM`` stepped
one reading at a time, one stream at a time, on the CPU.

The engine's CPU path is a fused step of its own and its CUDA path is cuDNN; comparing
either with the other (or with float32 ``nn.LSTM``) would let an error they share, or a
lower-precision mode such as TF32, pass. Tolerance: float32 arithmetic over up to 16 steps
of a hidden-64, 2-layer model stays within 1e-4 (scaler units) of float64; TF32 matrix
products would be off by about 1e-3 and fail.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from detector.core.engine import Engine
from detector.core.model import ReconstructionLSTM
from detector.core.scoring import Scaler
from tests.unit.factories import make_bundle

T0 = 1_795_000_000_000
ATOL = 1e-4  # float32 against float64, scaler units (see the module docstring)
FEATURES = 8
MEAN = tuple(float(10 * i) for i in range(FEATURES))
STD = tuple(0.5 + i for i in range(FEATURES))

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ],
    ),
]

Reading = tuple[str, int, np.ndarray]


def _traffic(rng: np.random.Generator, streams: int, most: int) -> list[Reading]:
    """Interleaved readings (raw units, some values missing), each stream's in time order."""
    order = [f"s{i}" for i in range(streams) for _ in range(int(rng.integers(1, most + 1)))]
    rng.shuffle(order)
    seen: dict[str, int] = {}
    out = []
    for s in order:
        k = seen[s] = seen.get(s, -1) + 1
        v = np.asarray(MEAN) + np.asarray(STD) * rng.standard_normal(FEATURES)
        v[rng.random(FEATURES) < 0.05] = np.nan
        out.append((s, T0 + 60_000 * k + int(rng.integers(0, 1000)), v.astype(np.float32)))
    return out


def _calendar64(ts_ms: int, periods_s: tuple[float, ...]) -> torch.Tensor:
    cols = []
    for p in periods_s:
        period_ms = int(p * 1000)
        phase = (ts_ms % period_ms) * (2 * math.pi / period_ms)
        cols += [math.sin(phase), math.cos(phase)]
    return torch.tensor([cols], dtype=torch.float64)  # (1, 2P)


def _reference(
    module: ReconstructionLSTM, readings: list[Reading]
) -> tuple[dict[str, list[np.ndarray]], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Each stream alone, one ``nn.LSTM`` step per reading, in float64 on the CPU.

    Returns each stream's expectations (scaler units, (F,) each) and final (h, c) (L, H).
    """
    m = copy.deepcopy(module).double().cpu().eval()
    cfg = m.config
    mean = torch.tensor(MEAN, dtype=torch.float64)
    std = torch.tensor(STD, dtype=torch.float64)
    zeros = torch.zeros(cfg.layers, 1, cfg.hidden, dtype=torch.float64)
    state: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    expected: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for s, ts, v in readings:
            h, c, x_prev = state.get(s, (zeros, zeros, torch.zeros(1, cfg.features).double()))
            x = (torch.from_numpy(v.astype(np.float64)).unsqueeze(0) - mean) / std  # (1, F)
            x_now = torch.where(torch.isnan(x), x_prev, x) if m.cross is not None else None
            x_hat = m.readout(h[-1], x_prev, x_now)  # (1, F)
            feed = torch.where(torch.isnan(x), x_hat, x)  # a missing value: what was expected
            x_in = torch.cat([feed, _calendar64(ts, cfg.periods_s)], dim=1)  # (1, I)
            _, (h, c) = m.lstm(x_in.unsqueeze(1), (h, c))  # (1, 1, I) -> (L, 1, H) each
            state[s] = (h, c, feed)
            expected.setdefault(s, []).append(x_hat[0].numpy())
    return expected, {s: (h[:, 0], c[:, 0]) for s, (h, c, _) in state.items()}


@pytest.mark.parametrize("nowcast", [False, True], ids=["forecast", "nowcast"])
@pytest.mark.parametrize("device", DEVICES)
def test_engine_matches_a_float64_per_stream_lstm(device: str, nowcast: bool) -> None:
    rng = np.random.default_rng(7)
    bundle = make_bundle(
        features=FEATURES, hidden=64, layers=2, seed=5, scaler=Scaler(MEAN, STD), nowcast=nowcast
    )
    readings = _traffic(rng, streams=150, most=16)
    want, want_state = _reference(bundle.module, readings)  # before the engine moves it
    eng = Engine(bundle, max_streams=1000, device=device, initial_capacity=16, chunk=61)
    got: dict[str, list[np.ndarray]] = {}
    i = 0
    while i < len(readings):  # random batch sizes, a stream repeated within a batch
        batch = readings[i : i + int(rng.integers(1, 400))]
        i += len(batch)
        ids = [s for s, _, _ in batch]
        res = eng.process(
            ids, np.array([t for _, t, _ in batch]), np.stack([v for _, _, v in batch]), 0
        )
        scaled = (res.expected.astype(np.float64) - MEAN) / STD  # back to scaler units
        for j, s in enumerate(ids):
            got.setdefault(s, []).append(scaled[j])
    worst = 0.0
    for s, exp in want.items():
        diff = np.abs(np.stack(got[s]) - np.stack(exp))
        worst = max(worst, float(diff.max()))
        slot = eng.store.slot_of(s)
        assert slot is not None
        h, c = want_state[s]
        for name, mine, ref in (("h", eng.store.h, h), ("c", eng.store.c, c)):
            err = float((mine[:, slot].double().cpu() - ref).abs().max())
            assert err < ATOL, f"{device}: stream {s}'s {name} is {err:.2e} off float64"
    assert worst < ATOL, f"{device}: expectations are {worst:.2e} off float64 (allowed {ATOL})"
