# docs/quality.md, session 6: the sustained statistic and the peak by position after a cold start, history replay.
# Usage: .venv/bin/python docs/studies/sustained_by_position.py STYLE SEED MODEL_DIR
import sys, math, dataclasses
from pathlib import Path
import numpy as np
from detector.artifacts import load_current
from training.calibrate import run_engine, sustained_averages
from training.fleet.styles import generate
style, seed, mdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
b = load_current(Path(mdir))
print("periods", b.module.config.periods_s, "thr", b.scoring.sustained.threshold, "peak", b.scoring.peak.threshold)
fleet = generate(style, seed, streams=12)
never = dataclasses.replace(b.scoring, threshold=math.inf, protect_state=False, peak=None, sustained=None, flatline=None, new_range=None, incidents=None)
r = run_engine(b.module, b.scaler, b.features, fleet.history, never, collect_from=[0]*12)
e = np.where(r.observed, r.errors, 0)
span = b.scoring.sustained.span; a = 2/(span+1)
avg = np.zeros_like(e); acc = np.zeros(e.shape[1])
for i in range(len(e)):
    if i == 0 or r.stream[i] != r.stream[i-1]: acc = np.zeros(e.shape[1])
    if r.index[i] >= 10: acc = acc + a*(e[i]-acc)
    avg[i] = acc
z = (np.abs(avg) / np.array(b.scoring.sustained.scale)).max(axis=1)
pk = np.abs(e).max(axis=1)
for lo, hi in ((30, 60), (60, 100), (100, 200), (200, 500), (500, 2000)):
    m = (r.index >= lo) & (r.index < hi)
    print(f"positions {lo}-{hi}: sustained z max {z[m].max():.2f} p99.9 {np.quantile(z[m], .999):.2f}; peak max {pk[m].max():.2f} p99.9 {np.quantile(pk[m], .999):.2f}")
