"""Engine throughput against a naive per-reading loop, measured side by side in one run.

    python bench/engine.py --streams 100000 --json      # the published figure
    python bench/engine.py --processes 2 --json         # and N engines on N cores at once
    python bench/engine.py --quick --json               # under 30 s

The workload is a fleet in which every stream reports once per tick, in a random order per
tick; consecutive readings form the engine's batches (so a batch may hold two readings of
a stream at a tick boundary). The engine does the full per-reading work: slot lookup,
gather, expectation, scoring, one LSTM step, scatter. The naive baseline keeps each
stream's (h, c) in a dict and calls ``nn.LSTM`` once per reading: the same model, the same
torch settings (oneDNN off for both, as it is many times slower for both here).

The naive loop's speed swings from machine to machine, so the engine is also put against
a limit measured in the same run: a large float32 matmul's FLOP/s on one thread (the
core's practical peak). ``roofline_fraction`` is the LSTM's and readout's FLOP per reading
times the engine's readings/s over that peak. ``--processes N`` also runs N engines in N
processes at once, each on its own share of the streams and one thread (what
``anomalyd run --processes N`` does), and reports their sum beside the single engine.

``--rules trained`` (the default) serves the model with every rule a trained model turns on
(whitening, each stream's own scale, flatline, sustained, peak, shift, level, spike,
difference, incidents: ``anomalyd train``'s output on a simulated fleet, thresholds included);
``--rules error`` with the error score and incidents alone, what this benchmark measured
before session 35. Readings are fresh noise every tick (a repeated value is a stuck sensor).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector.core.bundle import ModelBundle
from detector.core.difference import DifferenceConfig
from detector.core.engine import Engine
from detector.core.level import LevelConfig
from detector.core.model import ModelConfig, ReconstructionLSTM
from detector.core.peak import PeakConfig
from detector.core.rules import FlatlineConfig, SustainConfig
from detector.core.scoring import Scaler, ScoringConfig
from detector.core.shift import ShiftConfig
from detector.core.spike import SpikeConfig
from detector.memory import keep_freed_memory

T0 = 1_795_219_200_000


RULES = ("trained", "error")


def _scoring(features: int, rules: str) -> ScoringConfig:
    """The rules a model serves with; ``trained``: those of a daily-style fleet's model
    (thresholds as ``anomalyd train`` set them), on any number of features."""
    if rules == "error":
        return ScoringConfig()
    f = features
    eye = tuple(float(i == j) for i in range(f) for j in range(f))
    return ScoringConfig(
        threshold=5.66,
        whiten=eye,
        own_scale=True,
        flatline=FlatlineConfig((5,) * f),
        sustained=SustainConfig(20, (0.2,) * f, 4.21, own=True),
        peak=PeakConfig(4.82, (1.0,) * f),
        shift=ShiftConfig(prior=(1.0,) * f, threshold=2.6, scale=(1.0,) * f),
        level=LevelConfig(prior=(1.0,) * f, threshold=3.5),
        spike=SpikeConfig(3.75, (1.0,) * f),
        difference=DifferenceConfig(prior=(1.0,) * f + (0.22,) * f, threshold=5.27),
    )


def _bundle(features: int, hidden: int, layers: int, rules: str = "trained") -> ModelBundle:
    torch.manual_seed(0)
    m = ReconstructionLSTM(ModelConfig(features, hidden, layers)).eval()
    names = tuple(f"f{i}" for i in range(features))
    scaler = Scaler((0.0,) * features, (1.0,) * features)
    return ModelBundle("bench", 1, names, m, scaler, _scoring(features, rules))


def bench_engine(
    b: ModelBundle, streams: int, batch: int, seconds: float, device: str, warm_ticks: int = 1
) -> tuple[float, int]:
    """Readings/s of the engine; also returns the readings processed."""
    eng = Engine(b, max_streams=streams, device=device, initial_capacity=streams)
    rng = np.random.default_rng(0)
    ids = [f"pump-{i:07d}" for i in range(streams)]
    f = len(b.features)
    order = rng.permutation(streams)
    tick_ids = [ids[i] for i in order]
    # A few ticks of noise in turn: a value repeated tick after tick is a stuck sensor.
    noise = rng.standard_normal((4, streams, f)).astype(np.float32)
    # Warm up: every stream resident, allocator and kernels warm.
    for t in range(warm_ticks):
        for s in range(0, streams, batch):
            eng.process(
                tick_ids[s : s + batch],
                np.full(min(batch, streams - s), T0 + t * 60_000),
                noise[t % 4, s : s + batch],
                now_ms=0,
            )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    n, tick = 0, warm_ticks
    t_start = time.perf_counter()
    while time.perf_counter() - t_start < seconds:
        ts = np.full(batch, T0 + tick * 60_000, np.int64)
        vals = noise[tick % 4]
        for s in range(0, streams, batch):
            k = min(batch, streams - s)
            eng.process(tick_ids[s : s + k], ts[:k], vals[s : s + k], now_ms=tick)
            n += k
        tick += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t_start), n


def matmul_flops(device: str, n: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of the best of ``repeats`` (n x n) @ (n x n) float32 matmuls: the peak the
    current torch thread setting reaches on this machine."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(repeats + 1):  # the first one warms the kernels up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        torch.mm(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def flop_per_reading(b: ModelBundle) -> int:
    """Multiply-adds x 2 of one step: every matrix of the model (LSTM gates, readout)."""
    return 2 * sum(w.numel() for w in b.module.parameters() if w.dim() == 2)


def _engine_process(
    args: tuple[int, int, int, int, int, float, bool, str], barrier: Any, out: Any
) -> None:
    features, hidden, layers, streams, batch, seconds, keep, rules = args
    torch.set_num_threads(1)
    if keep:
        keep_freed_memory()
    b = _bundle(features, hidden, layers, rules)
    barrier.wait()  # every process built, then all measure together
    rate, _ = bench_engine(b, streams, batch, seconds, "cpu")
    out.put(rate)


def bench_processes(
    procs: int,
    features: int,
    hidden: int,
    layers: int,
    streams: int,
    batch: int,
    seconds: float,
    keep: bool,
    rules: str,
) -> float:
    """Summed readings/s of ``procs`` engines running at once, each on streams / procs."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    n = streams // procs
    share = (features, hidden, layers, n, min(batch, n), seconds, keep, rules)
    ps = [ctx.Process(target=_engine_process, args=(share, barrier, out)) for _ in range(procs)]
    for q in ps:
        q.start()
    rates = [out.get(timeout=seconds * 10 + 300) for _ in ps]
    for q in ps:
        q.join()
        if q.exitcode != 0:
            raise RuntimeError(f"an engine process exited with {q.exitcode}")
    return float(sum(rates))


def bench_naive(b: ModelBundle, streams: int, seconds: float, device: str) -> float:
    """Readings/s of a per-reading loop: a dict of (h, c), one nn.LSTM call per reading."""
    lstm = b.module.lstm.to(device)
    cfg = b.module.config
    state: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    ids = [f"pump-{i:07d}" for i in range(streams)]
    x = torch.randn(1, 1, cfg.input_size, device=device)
    zero = torch.zeros(cfg.layers, 1, cfg.hidden, device=device)
    n = 0
    prev = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        with torch.inference_mode():
            t_start = time.perf_counter()
            while time.perf_counter() - t_start < seconds:
                sid = ids[n % streams]
                hc = state.get(sid, (zero, zero))
                _, hc = lstm(x, hc)
                state[sid] = hc
                n += 1
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return n / (time.perf_counter() - t_start)
    finally:
        torch.backends.mkldnn.enabled = prev


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=100_000)
    p.add_argument("--features", type=int, default=8)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="readings per engine call (default: 16384 on CPU, all streams on CUDA)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1, like the naive loop, which never runs "
        "parallel; 0: torch's default, one per core — slower when other processes "
        "load the cores, as OpenMP threads then wait on each other)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="also run this many engines at once, one per process and thread, each on its "
        "share of the streams, and report their sum (CPU only)",
    )
    p.add_argument(
        "--rules",
        choices=RULES,
        default="trained",
        help="trained: every rule a trained model serves with (default); error: the error "
        "score and incidents alone",
    )
    p.add_argument("--quick", action="store_true", help="a run under 30 s")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args()
    if a.quick:
        a.seconds = min(a.seconds, 4.0)
        a.streams = min(a.streams, 20_000)
    if a.threads:
        torch.set_num_threads(a.threads)
    kept = keep_freed_memory()  # as `anomalyd` does at start
    device = "cuda" if a.device == "auto" and torch.cuda.is_available() else a.device
    batch = a.batch or (16_384 if device == "cpu" else a.streams)
    b = _bundle(a.features, a.hidden, a.layers, a.rules)
    peak = matmul_flops(device)
    naive = bench_naive(b, a.streams, min(a.seconds, 5.0), device)
    engine, n = bench_engine(b, a.streams, min(batch, a.streams), a.seconds, device)
    flop = flop_per_reading(b)
    # The engine's own store: its statistics row is wider than the scorer's (per feature:
    # last fed reading, flatline counters, new territory's ranges).
    bps = Engine(b, max_streams=1, device=device).store.bytes_per_stream()
    out = {
        "engine_readings_per_s": round(engine),
        "naive_readings_per_s": round(naive),
        "ratio": round(engine / naive, 1),
        "flop_per_reading": flop,
        "matmul_flop_per_s": round(peak),
        "roofline_fraction": round(flop * engine / peak, 4),
        "bytes_per_stream": bps,
        "device": device if device != "cuda" else torch.cuda.get_device_name(),
        "streams": a.streams,
        "hidden": a.hidden,
        "layers": a.layers,
        "features": a.features,
        "rules": a.rules,
        "batch": batch,
        "readings_measured": n,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "freed_memory_kept": kept,
    }
    if a.processes > 1 and device == "cpu":
        both = bench_processes(
            a.processes, a.features, a.hidden, a.layers, a.streams, batch, a.seconds, kept, a.rules
        )
        out["processes"] = a.processes
        out["engine_processes_readings_per_s"] = round(both)
        out["processes_speedup"] = round(both / engine, 2)
        out["processes_roofline_fraction"] = round(flop * both / (peak * a.processes), 4)
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:24} {v}")


if __name__ == "__main__":
    main()
