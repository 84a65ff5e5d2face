# docs/quality.md, session 9: a shifted level seen against the stream's other channels.
# Usage: .venv/bin/python docs/studies/cross_level.py STYLE SEED [FAST SLOW COV READY]
# No model: per stream, from a cold state, d = fast - slow EWMA of each channel (scaler
# units of the history), its EW covariance C (span COV), z_f = (P d)_f / sqrt(P_ff) with
# P = C^-1 (the channel's deviation given the others'), at equal false rate as level_stats.
"""Offline: the cross-channel level statistic's recall per kind at 0.2 clusters / 10k."""
import os
import sys
from collections import defaultdict

import numpy as np

from training.budget import cluster_peaks, rate_level
from training.fleet.styles import generate

style, seed = sys.argv[1], int(sys.argv[2])
fast, slow, cov, ready = (int(v) for v in (sys.argv[3:7] or (8, 200, 1000, 300)))
RIDGE = float(os.environ.get("RIDGE", "0.05"))  # of each channel's variance, on the diagonal
fleet = generate(style, seed, streams=12)
H = np.concatenate([s.values for s in fleet.history]).astype(np.float64)
mu, sd = np.nanmean(H, axis=0), np.nanstd(H, axis=0)


def stats(series):
    """Per reading: (stream, |z| max over features cross, |z| max diagonal only)."""
    out_s, out_c, out_d = [], [], []
    for i, s in enumerate(series):
        x = (s.values.astype(np.float64) - mu) / sd
        f = x.shape[1]
        a = m = None
        C = np.eye(f) * 0.0
        n = 0
        zc = np.zeros(len(x)); zd = np.zeros(len(x))
        for t in range(len(x)):
            v = x[t]
            if a is None:
                a = np.where(np.isnan(v), 0.0, v); m = a.copy()
                continue
            v = np.where(np.isnan(v), a, v)
            a = a + (2 / (fast + 1)) * (v - a)
            m = m + (2 / (slow + 1)) * (v - m)
            d = a - m
            n += 1
            r = max(2 / (cov + 1), 1.0 / n)
            if n > ready:
                dg = np.diag(C)
                Creg = C + np.diag(RIDGE * dg + 1e-9)
                P = np.linalg.inv(Creg)
                zc[t] = np.max(np.abs(P @ d) / np.sqrt(np.diag(P)))
                zd[t] = np.max(np.abs(d) / np.sqrt(dg + 1e-9))
            C = C + r * (np.outer(d, d) - C)
        out_s.append(np.full(len(x), i)); out_c.append(zc); out_d.append(zd)
    return np.concatenate(out_s), {"cross": np.concatenate(out_c), "diag": np.concatenate(out_d)}


cs, cst = stats(fleet.clean)
as_, ast = stats(fleet.anomalous)
ts = np.concatenate([s.ts_ms for s in fleet.anomalous])
ids = np.concatenate([[s.stream_id] * len(s) for s in fleet.anomalous])
period = np.median(np.diff(fleet.anomalous[0].ts_ms))
inlab = np.zeros(len(ts), bool)
for L in fleet.labels:
    inlab |= (ids == L.stream_id) & (ts >= L.start_ms) & (ts <= L.end_ms + 5 * period)
tot = defaultdict(int)
print(style, seed, f"fast {fast} slow {slow} cov {cov} ready {ready}")
for name in cst:
    lvl = rate_level(cst[name], cs, 0.2e-4, 10, 0.0)
    za = ast[name]
    fp = len(cluster_peaks(np.where(inlab, 0, za), as_, lvl, 10))
    hit = defaultdict(int)
    for L in fleet.labels:
        msk = (ids == L.stream_id) & (ts >= L.start_ms) & (ts <= L.end_ms + 5 * period)
        if name == "cross":
            tot[L.kind] += 1
        if msk.any() and za[msk].max() >= lvl:
            hit[L.kind] += 1
    kinds = sorted(tot)
    print(f"{name:6s} level {lvl:6.2f} fp {fp:2d} " + " ".join(f"{k[:6]} {hit[k]}" for k in kinds)
          + f"  total {sum(hit.values())} of {sum(tot.values())}")
