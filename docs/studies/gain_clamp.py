# docs/quality.md, session 8: the nowcast readout's level gain (k * x_prev) with x_prev
# clamped to +-C scaler units (C > 0), or (C = -1) to the range the fleet's history spans,
# on a trained fleet model's replays (no refit; C 0: as shipped).
# Usage: .venv/bin/python docs/studies/gain_clamp.py STYLE SEED MODEL_DIR C
import sys
from pathlib import Path
import numpy as np
import torch
from detector.artifacts import load_current
from training.calibrate import run_engine
from training.fleet.styles import generate
from studylib import clamp_gain
style, seed, mdir, C = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
b = load_current(Path(mdir))
fleet = generate(style, seed, streams=12)
hist = (np.concatenate([s.values for s in fleet.history]) - np.array(b.scaler.mean)) / np.array(b.scaler.std)
lo = torch.tensor(np.nanmin(hist, 0), dtype=torch.float32)
hi = torch.tensor(np.nanmax(hist, 0), dtype=torch.float32)
if C != 0:
    clamp_gain(-C, C) if C > 0 else clamp_gain(lo, hi)
run = lambda ser: run_engine(b.module, b.scaler, b.features, ser, b.scoring, collect_from=[0] * len(ser))
a, c = run(fleet.anomalous), run(fleet.clean)
ts = np.array([fleet.anomalous[i].ts_ms[j] for i, j in zip(a.stream, a.index)])
ids = np.array([fleet.anomalous[i].stream_id for i in a.stream])
period = np.median(np.diff(fleet.anomalous[0].ts_ms))
inlab = np.zeros(len(ts), bool); caught = 0
for L in fleet.labels:
    m = (ids == L.stream_id) & (ts >= L.start_ms) & (ts <= L.end_ms + 5 * period)
    inlab |= m
    caught += bool((m & a.opened).any())
x = (np.concatenate([s.values for s in fleet.clean]) - np.array(b.scaler.mean)) / np.array(b.scaler.std)
out = ((x < lo.numpy()) | (x > hi.numpy())).any(axis=1)
print(f"{style} s{seed} C {C}: caught {caught}/{len(fleet.labels)}, false in anomalous "
      f"{int((a.opened & ~inlab).sum())}, clean opened {int(c.opened.sum())}; clean readings "
      f"with a channel past the history's range {100 * out.mean():.2f} %")
