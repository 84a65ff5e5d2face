# docs/quality.md, session 10: the shift statistic's false clusters by stream age, long runs.
# Usage: .venv/bin/python docs/studies/shift_age.py STYLE SEED [EVAL]  (dev seeds only)
# Env: MEMORY (covariance span, default ShiftConfig's), RIDGE, FLOOR (shift's overrides).
# Calibrated as the trainer does (prior and budget threshold on the 2,000-reading history of
# 12 streams); then EVAL clean readings per stream (same streams, new noise) from cold:
# false clusters (gap = resolve_after) per 10k readings by age bucket. No model.
"""Offline: does the shift statistic's tail hold in streams older than calibration saw?"""
import os
import sys

import numpy as np
import torch

import detector.core.shift as shift
from detector.core.incidents import IncidentConfig
from detector.core.shift import ShiftConfig
from training.batches import fit_scaler
from training.budget import SHARES, rate_level
from training.fleet.styles import generate
from training.shiftcal import shift_prior, shift_statistic

style, seed = sys.argv[1], int(sys.argv[2])
ev = int(sys.argv[3]) if len(sys.argv) > 3 else 20000
shift.RIDGE = float(os.environ.get("RIDGE", shift.RIDGE))
shift.FLOOR = float(os.environ.get("FLOOR", shift.FLOOR))
memory = int(os.environ.get("MEMORY", ShiftConfig().memory))
GAP = IncidentConfig().resolve_after
RATE = SHARES["shift"] / sum(SHARES.values()) * 0.5e-4
BUCKETS = (0, 1000, 2000, 5000, 10**9)
torch.set_num_threads(1)
fl = generate(style, seed, 12, 2000, ev)
sc = fit_scaler(fl.history, [len(s) for s in fl.history], 1e-6)
cfg = ShiftConfig(memory=memory)
cfg = ShiftConfig(memory=memory, prior=shift_prior(fl.history, sc, cfg), threshold=1.0)


def flat(series):
    z = shift_statistic(series, sc, cfg, 20)
    idx = np.concatenate([np.arange(len(s)) for s in series])
    sid = np.concatenate([np.full(len(s), i) for i, s in enumerate(series)])
    return np.concatenate(z), sid, idx


zh, sh, _ = flat(fl.history)
thr = rate_level(zh, sh, RATE, GAP, 3.5)
zc, scl, ic = flat(fl.clean)
hit = np.flatnonzero(zc >= thr)
new = np.r_[True, (np.diff(hit) > GAP) | (scl[hit][1:] != scl[hit][:-1])] if hit.size else []
starts = ic[hit[new]] if hit.size else np.zeros(0, int)
row = f"{style:9s} s{seed} memory {memory} ridge {shift.RIDGE} floor {shift.FLOOR} thr {thr:.2f} |"
for a, b in zip(BUCKETS, BUCKETS[1:]):
    n = int(((ic >= a) & (ic < b)).sum())
    k = int(((starts >= a) & (starts < b)).sum())
    row += f" {a}-{min(b, ev)}: {k} ({1e4 * k / max(n, 1):.2f}/10k)"
print(row, flush=True)
