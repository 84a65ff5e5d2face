# docs/benchmarks.md, session 23: the engine as the worker drives it in bench/e2e.py's batch
# phase (polls of 2,000 streams x 100 readings: 100 waves of 2,000), with a cProfile table.
# Usage: [S=streams T=readings-per-stream] .venv/bin/python docs/studies/engine_waves.py [tottime|cumtime]
import cProfile, pstats, sys, time
import numpy as np, torch
sys.path.insert(0, ".")
from detector.core.bundle import ModelBundle
from detector.core.engine import Engine
from detector.core.model import ModelConfig, ReconstructionLSTM
from detector.core.scoring import Scaler, ScoringConfig
torch.set_num_threads(1); torch.manual_seed(0)
m = ReconstructionLSTM(ModelConfig(4, hidden=64, layers=2)).eval()
b = ModelBundle("bench", 1, ("a","b","c","d"), m, Scaler((50.0, 0.1, 3.0, 20.0), (10.0, 0.05, 0.5, 5.0)), ScoringConfig())
import os; S, T = int(os.environ.get("S", 2000)), int(os.environ.get("T", 100))
eng = Engine(b, max_streams=100000, device="cpu")
rng = np.random.default_rng(0)
ids = [f"pump-{i:05d}" for i in range(S)]
sids = [s for s in ids for _ in range(T)]
base = np.array([50.0, 0.1, 3.0, 20.0])
def poll(k):
    ts = (1_795_219_200_000 + (k * T + np.tile(np.arange(T), S)) * 1000).astype(np.int64)
    v = (base + rng.standard_normal((S * T, 4)) * [1, 0.01, 0.1, 1]).astype(np.float32)
    return ts, v
polls = [poll(k) for k in range(6)]
eng.process(sids, *polls[0], now_ms=0)
def run(ps):
    t = time.perf_counter()
    for ts, v in ps: eng.process(list(sids), ts, v, now_ms=0)
    return len(ps) * S * T / (time.perf_counter() - t)
print("readings/s", run(polls[1:3]))
if len(sys.argv) > 1:
    pr = cProfile.Profile(); pr.enable(); r = run(polls[3:6]); pr.disable()
    print("profiled", r)
    pstats.Stats(pr).sort_stats(sys.argv[1]).print_stats(35)
