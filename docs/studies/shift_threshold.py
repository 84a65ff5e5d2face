# docs/quality.md, session 10: the shift rule's calibrated threshold against its realised
# false rate on clean replays, per style, with the trainer's own functions and no model.
# Usage: .venv/bin/python docs/studies/shift_threshold.py SEED [SEED ...]  (dev seeds only)
# Per style and seed: scaler and prior from the history (24 streams x 2,000), the threshold
# as the budget sets it (rate_level at the rule's share of 0.5 / 10k, floor 3.5); then the
# clean and anomalous segments (1,500 each, cold) scored by the statistic alone: false
# clusters cold (first 1,000 readings) / warm, and labels caught, at that threshold and at
# fixed levels. Leaves out the engine's hold during anomalous runs (recall only).
"""Offline: does the budget's shift threshold hold its false rate on unseen clean data?"""
import os
import sys
from collections import defaultdict

import numpy as np
import torch

import detector.core.shift as shift
from detector.core.incidents import IncidentConfig
from detector.core.shift import ShiftConfig
from training.batches import fit_scaler
from training.budget import SHARES, cluster_peaks, rate_level
from training.fleet.styles import STYLES, generate
from training.shiftcal import shift_prior, shift_statistic

seeds = [int(s) for s in sys.argv[1:]] or [1]
shift.RIDGE = float(os.environ.get("RIDGE", shift.RIDGE))  # env RIDGE, FLOOR: overrides
shift.FLOOR = float(os.environ.get("FLOOR", shift.FLOOR))
print("ridge", shift.RIDGE, "floor", shift.FLOOR)
GAP = IncidentConfig().resolve_after
RATE = SHARES["shift"] / sum(SHARES.values()) * 0.5e-4
WARMUP, LEVELS = 20, (3.5, 4.0, 4.5, 5.0, 5.5, 6.0)
torch.set_num_threads(1)


def stat(series, scaler, cfg):
    z = shift_statistic(series, scaler, cfg, WARMUP)
    idx = np.concatenate([np.arange(len(s)) for s in series])
    sid = np.concatenate([np.full(len(s), i) for i, s in enumerate(series)])
    return np.concatenate(z), sid, idx


def clusters(z, sid, idx, level):
    """(start index of each cluster of z >= level, stream)."""
    hit = np.flatnonzero(z >= level)
    if hit.size == 0:
        return np.zeros(0, int)
    new = np.r_[True, (np.diff(hit) > GAP) | (sid[hit][1:] != sid[hit][:-1])]
    return idx[hit[new]]


tot = defaultdict(lambda: defaultdict(float))
for style in STYLES:
    for seed in seeds:
        fl = generate(style, seed)
        sc = fit_scaler(fl.history, [len(s) for s in fl.history], 1e-6)
        cfg = ShiftConfig()
        cfg = ShiftConfig(prior=shift_prior(fl.history, sc, cfg), threshold=1.0)
        zh, sh, _ = stat(fl.history, sc, cfg)
        thr = rate_level(zh, sh, RATE, GAP, 3.5)
        zc, scl, ic = stat(fl.clean, sc, cfg)
        za, sa, ia = stat(fl.anomalous, sc, cfg)
        ts = np.concatenate([s.ts_ms for s in fl.anomalous])
        period = np.median(np.diff(fl.anomalous[0].ts_ms))
        row = f"{style:9s} s{seed:<3d} thr {thr:5.2f}"
        for key, lvl in (("cal", thr), *((f"{v:.1f}", v) for v in LEVELS)):
            st = clusters(zc, scl, ic, lvl)
            cold, warm = int((st < 1000).sum()), int((st >= 1000).sum())
            caught = 0
            for lab in fl.labels:
                k = fl.anomalous.index(next(s for s in fl.anomalous if s.stream_id == lab.stream_id))
                m = (sa == k) & (ts >= lab.start_ms) & (ts <= lab.end_ms + 5 * period)
                caught += bool(m.any() and za[m].max() >= lvl)
            tot[style][key + " cold"] += cold
            tot[style][key + " warm"] += warm
            tot[style][key + " caught"] += caught
            row += f" | {key} f{cold}/{warm} c{caught}"
        tot[style]["labels"] += len(fl.labels)
        tot[style]["cold n"] += sum(min(len(s), 1000) for s in fl.clean)
        tot[style]["warm n"] += sum(max(len(s) - 1000, 0) for s in fl.clean)
        print(row, flush=True)
print("per 10k cold/warm, caught of labels")
for style, t in tot.items():
    row = f"{style:9s} labels {int(t['labels'])}"
    for key in ("cal", *(f"{v:.1f}" for v in LEVELS)):
        row += (f" | {key} {1e4 * t[key + ' cold'] / t['cold n']:.1f}/"
                f"{1e4 * t[key + ' warm'] / t['warm n']:.1f} c{int(t[key + ' caught'])}")
    print(row)
