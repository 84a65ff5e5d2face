# docs/quality.md, session 8: a machine-like fleet the simulator did not make (SMD/SKAB-like):
# few streams, 38 channels of mixed kinds (constant, binary, a walk at 1e6, daily, quantised,
# slow wander, heavy tail), 1-minute cadence; writes OUT/train.csv and OUT/test.csv (clean).
# Usage: .venv/bin/python docs/studies/wander_probe.py OUT SEED STREAMS TRAIN_ROWS TEST_ROWS
import csv, sys
import numpy as np
rng = np.random.default_rng(int(sys.argv[2]))
n_streams, n_train, n_test, n_ch = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), 38
t0 = 1_700_000_000_000
def channel(k, n):
    t = np.arange(n)
    kind = k % 7
    if kind == 0: return np.zeros(n)                                   # constant
    if kind == 1: return (rng.random(n) < 0.1).astype(float)            # binary flag
    if kind == 2: return 1e6 + np.cumsum(rng.normal(0, 50, n))          # huge-scale walk
    if kind == 3: return np.sin(2*np.pi*t/1440 + k) + rng.normal(0, .05, n)  # daily
    if kind == 4: return np.round(rng.normal(20, 2, n))                 # quantised
    if kind == 5: return 0.3 + 0.01*rng.standard_normal(n).cumsum()/30  # slow wander
    return np.abs(rng.normal(0, 1, n))**3                               # heavy tail
with open(sys.argv[1] + "/train.csv", "w", newline="") as ft, open(sys.argv[1] + "/test.csv", "w", newline="") as fe:
    wt, we = csv.writer(ft), csv.writer(fe)
    head = ["ts", "stream_id", *[f"c{k}" for k in range(n_ch)]]
    wt.writerow(head); we.writerow(head)
    for s in range(n_streams):
        n = n_train + n_test
        cols = np.stack([channel(k, n) for k in range(n_ch)], 1)
        for i in range(n):
            (wt if i < n_train else we).writerow([t0 + 60_000*i, f"m{s}", *[repr(float(v)) for v in cols[i]]])
