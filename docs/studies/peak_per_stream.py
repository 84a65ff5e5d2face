# docs/quality.md, session 6. Usage: .venv/bin/python docs/studies/peak_per_stream.py STYLE SEED MODEL_DIR
"""Offline: the peak statistic with per-stream running per-feature scales vs fleet-wide."""
import sys, math, dataclasses
from collections import defaultdict
from pathlib import Path
import numpy as np
from detector.artifacts import load_current
from training.calibrate import run_engine
from training.fleet.styles import generate
from training.budget import rate_level, cluster_peaks

from studylib import setup
style, seed, b, fleet, run = setup()
W = b.scoring.warmup
hist, clean, anom = (run(s, 0) for s in (fleet.history, fleet.clean, fleet.anomalous))
prior = float(np.mean(hist.errors[hist.index >= 100] ** 2))
def normed(r, P=100.0, window=1000, cap=4.0):
    e = np.where(r.observed, r.errors, 0.0).astype(np.float64)
    out = np.empty_like(e); ms = None; n = 0
    for i in range(len(e)):
        if i == 0 or r.stream[i] != r.stream[i-1]:
            ms = np.full(e.shape[1], prior); n = 0
        w = n / (n + P)
        s = np.sqrt(w * ms + (1 - w) * prior)
        out[i] = e[i] / s
        obs = r.observed[i]
        n2 = min(n + 1, window)
        ms = np.where(obs, ms + (np.minimum(e[i]**2, (cap*s)**2) - ms) / n2, ms)
        n = n2
    return out
def evaluate(stat_h, stat_c, stat_a, label):
    keep_h = hist.index >= W
    lvl = rate_level(stat_h[keep_h], hist.stream[keep_h], 0.4 * 0.5e-4, 10, 0.0)
    kc = clean.index >= W
    cold = clean.index < 1000
    fc = cluster_peaks(np.where(kc & cold, stat_c, 0), clean.stream, lvl, 10)
    fw = cluster_peaks(np.where(kc & ~cold, stat_c, 0), clean.stream, lvl, 10)
    ts = np.array([fleet.anomalous[i].ts_ms[j] for i, j in zip(anom.stream, anom.index)])
    ids = np.array([fleet.anomalous[i].stream_id for i in anom.stream])
    period = np.median(np.diff(fleet.anomalous[0].ts_ms))
    hit = defaultdict(int); tot = defaultdict(int)
    for L in fleet.labels:
        m = (ids == L.stream_id) & (ts >= L.start_ms) & (ts <= L.end_ms + 5*period)
        tot[L.kind] += 1
        if m.any() and stat_a[m].max() >= lvl: hit[L.kind] += 1
    print(f"{style} s{seed} {label:8s} level {lvl:5.2f} false clean cold {len(fc)} warm {len(fw)}  caught {sum(hit.values())}/{sum(tot.values())} " + " ".join(f"{k[:5]} {hit[k]}" for k in sorted(tot)), flush=True)
evaluate(*(np.abs(np.where(r.observed, r.errors, 0)).max(axis=1) for r in (hist, clean, anom)), "fleet")
evaluate(*(np.abs(normed(r)).max(axis=1) for r in (hist, clean, anom)), "stream")
