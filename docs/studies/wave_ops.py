# docs/benchmarks.md, session 18. Usage: PYTHONPATH=. .venv/bin/python docs/studies/wave_ops.py MODEL_DIR [STREAMS]
# Torch calls in one engine wave (a TorchFunctionMode count) and the wave's time, with a
# trained model's scoring as shipped and with own_scale off: what the own scale costs.
import dataclasses, sys, time
from pathlib import Path
import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from detector.artifacts import load_current
from detector.core.engine import Engine

class Count(TorchFunctionMode):
    n = 0
    def __torch_function__(self, func, types, args=(), kwargs=None):
        Count.n += 1
        return func(*args, **(kwargs or {}))

b = load_current(Path(sys.argv[1]))
streams = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
torch.set_num_threads(1)
rng = np.random.default_rng(0)
for own in (True, False):
    bundle = dataclasses.replace(b, scoring=dataclasses.replace(b.scoring, own_scale=own))
    eng = Engine(bundle, max_streams=streams, device="cpu", initial_capacity=streams)
    ids = [f"s{i}" for i in range(streams)]
    def go(t):
        ts = np.full(streams, 1_795_219_200_000 + 60_000 * t, dtype=np.int64)
        vals = rng.standard_normal((streams, len(b.features))).astype(np.float32)
        return eng.process(ids, ts, vals, int(ts[0]))
    for t in range(10):
        go(t)
    Count.n = 0
    with Count():
        go(10)
    calls = Count.n
    t0 = time.perf_counter()
    for t in range(11, 40):
        go(t)
    dt = (time.perf_counter() - t0) / 29
    print(f"own_scale={own}: {calls} torch calls a wave of {streams} streams, {dt * 1e3:.2f} ms a wave, {streams / dt:,.0f} readings/s")
