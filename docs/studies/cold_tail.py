# docs/quality.md, session 11: after a cold start, when do the rules' statistics look like a
# warm stream's — in the tail, not only the median (what training.budget.choose_warmup asks)?
# The same readings are scored by streams started OFFSET readings earlier (warm) and by
# streams started at them (cold), every threshold infinite; per position after the cold
# start: the median and the 99th percentile over streams of the raw error and of the
# sustained statistic (|average of signed errors| / scale, largest feature), cold / warm.
# Usage: .venv/bin/python docs/studies/cold_tail.py MODEL pump START [STREAMS]
#        .venv/bin/python docs/studies/cold_tail.py MODEL STYLE SEED [STREAMS]   (fleet styles)
"""Cold against warm, by position, in the tail."""
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from detector.artifacts import load_current
from detector.sandbox.simulation import FleetSpec
from training.calibrate import run_engine, sustained_averages
from training.data import StreamSeries, from_simulation

OFFSET = 300
model, corpus, arg = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
streams = int(sys.argv[4]) if len(sys.argv) > 4 else 200
bundle = load_current(model)
if corpus == "pump":
    series = from_simulation(FleetSpec(streams=streams, seed=5).clean(), 600 + OFFSET, arg - OFFSET)
else:
    from training.fleet.styles import STYLES, generate

    fleet = generate(STYLES[corpus], arg, streams)
    series = [StreamSeries(s.stream_id, s.ts_ms, s.values) for s in fleet.clean][:streams]
never = replace(bundle.scoring, threshold=math.inf, protect_state=False)
if never.sustained is not None:
    never = replace(never, sustained=replace(never.sustained, threshold=math.inf))
late = [StreamSeries(s.stream_id, s.ts_ms[OFFSET:], s.values[OFFSET:]) for s in series]
w = never.warmup
args = (bundle.module, bundle.scaler, bundle.features)
warm = run_engine(*args, series, never, collect_from=[OFFSET + w] * len(series))
cold = run_engine(*args, late, never, collect_from=[w] * len(late))
sus = bundle.scoring.sustained


def stat(run):  # noqa: ANN001, ANN202
    avg, _ = sustained_averages(run, sus.span)
    return (np.abs(avg) / np.asarray(sus.scale)).max(axis=1)


sw, sc = stat(warm), stat(cold)
print(f"thresholds: error {bundle.scoring.threshold:.2f}, sustained {sus.threshold:.2f}, "
      f"warmup {w}; {len(series)} streams")
print("pos       raw med c/w  raw p99 c/w   sus med c/w  sus p99 c/w   sus over thr c/w")
for lo in range(0, 300, 25):
    kw = (warm.index >= OFFSET + lo) & (warm.index < OFFSET + lo + 25)
    kc = (cold.index >= lo) & (cold.index < lo + 25)
    a = [np.median(cold.raw[kc]) / np.median(warm.raw[kw]),
         np.quantile(cold.raw[kc], 0.99) / np.quantile(warm.raw[kw], 0.99)]
    # the sustained average restarts at the first collected reading: compare once both ran span
    ok = lo >= sus.span
    b = [np.median(sc[kc]) / np.median(sw[kw]), np.quantile(sc[kc], 0.99) /
         np.quantile(sw[kw], 0.99)] if ok else [math.nan, math.nan]
    over = (int((sc[kc] > sus.threshold).sum()), int((sw[kw] > sus.threshold).sum()))
    print(f"{lo:3d}-{lo + 25:3d}   {a[0]:8.2f}    {a[1]:8.2f}     {b[0]:8.2f}    {b[1]:8.2f}"
          f"      {over[0]} / {over[1]}")
