# docs/quality.md, session 6: two-window statistics at equal false rate, of the cumulated
# residuals, or (with `raw`) of the raw readings beside the baseline's 5-reading difference.
# Usage: .venv/bin/python docs/studies/level_stats.py STYLE SEED MODEL_DIR [raw]
# (a model `anomalyd evaluate fleet --split dev --streams 12` trained)
"""Offline: two-window level statistics vs the peak, at equal false rate."""
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
clean, anom = run(fleet.clean), run(fleet.anomalous)

def ew(x, span, starts):
    a = 2.0/(span+1); out = np.empty_like(x); acc = None
    for i in range(len(x)):
        if i in starts or acc is None: acc = x[i].copy()
        acc = acc + a*(x[i]-acc); out[i] = acc
    return out

def stats(r):
    n, f = r.errors.shape
    first = set(np.flatnonzero(np.r_[True, r.stream[1:] != r.stream[:-1]]).tolist())
    e = np.clip(np.where(r.observed, r.errors, 0.0), -10, 10)
    C = np.empty_like(e); acc = np.zeros(f)
    for i in range(n):
        if i in first: acc = np.zeros(f)
        acc = acc + e[i]; C[i] = acc
    out = {"peak": np.abs(e)}
    for k, m in ((3, 30), (5, 60), (8, 100), (10, 200), (5, 300)):
        out[f"lvl{k}/{m}"] = ew(C, k, first) - ew(C, m, first)
    out["sus20"] = ew(e, 20, first)
    return out
def stats_raw(r, series):
    n, f = r.errors.shape
    X = np.stack([series[s].values[j] for s, j in zip(r.stream, r.index)]).astype(np.float64)
    X = (X - np.array(b.scaler.mean)) / np.array(b.scaler.std)
    for i in range(n):
        bad = np.isnan(X[i])
        if bad.any(): X[i][bad] = 0 if i == 0 or r.stream[i] != r.stream[i-1] else X[i-1][bad]
    first = set(np.flatnonzero(np.r_[True, r.stream[1:] != r.stream[:-1]]).tolist())
    e = np.clip(np.where(r.observed, r.errors, 0.0), -10, 10)
    out = {"peak": np.abs(e)}
    for k, m in ((3, 30), (5, 60), (8, 100), (5, 200)):
        out[f"raw{k}/{m}"] = ew(X, k, first) - ew(X, m, first)
    D = np.vstack([np.zeros((5, f)), X[5:] - X[:-5]]) / 5
    D[[i for i in range(n) if any(0 <= i - q < 5 for q in first)]] = 0
    out["diff5"] = D
    return out
if sys.argv[4:] == ["raw"]:
    sc, sa = stats_raw(clean, fleet.clean), stats_raw(anom, fleet.anomalous)
else:
    sc, sa = stats(clean), stats(anom)
budget = 0.2e-4
res = {}
for name in sc:
    for norm in ("fleet", "stream"):
        if name == "peak" and norm == "stream": continue
        if norm == "fleet":
            scale_c = sc[name].std(axis=0)[None, :]; scale_a = scale_c
        else:
            S = np.stack([sc[name][clean.stream == s].std(axis=0) for s in range(12)])
            scale_c = S[clean.stream]; scale_a = S[anom.stream]
        zc = (np.abs(sc[name])/scale_c).max(axis=1); za = (np.abs(sa[name])/scale_a).max(axis=1)
        # ignore the first 60 readings (statistics need time) in both
        lvl = rate_level(zc, clean.stream, budget, 10, 0.0)
        res[(name, norm)] = (lvl, za)
ts = np.array([fleet.anomalous[i].ts_ms[j] for i, j in zip(anom.stream, anom.index)])
ids = np.array([fleet.anomalous[i].stream_id for i in anom.stream])
period = np.median(np.diff(fleet.anomalous[0].ts_ms))
hit = defaultdict(lambda: defaultdict(int)); tot = defaultdict(int)
fp = {}
for key, (lvl, za) in res.items():
    inlab = np.zeros(len(za), bool)
    for L in fleet.labels:
        inlab |= (ids == L.stream_id) & (ts >= L.start_ms) & (ts <= L.end_ms + 5*period)
    fp[key] = len(cluster_peaks(np.where(inlab, 0, za), anom.stream, lvl, 10))
for L in fleet.labels:
    m = (ids == L.stream_id) & (ts >= L.start_ms) & (ts <= L.end_ms + 5*period)
    tot[L.kind] += 1
    for key, (lvl, za) in res.items():
        if m.any() and za[m].max() >= lvl: hit[key][L.kind] += 1
kinds = sorted(tot)
print(style, seed, "labels", dict(tot))
print(f"{'stat':18s} {'level':>6s} fpA " + " ".join(f"{k[:6]:>6s}" for k in kinds) + "  total")
for key, (lvl, za) in res.items():
    print(f"{key[0]+'/'+key[1]:18s} {lvl:6.2f} {fp[key]:3d} " + " ".join(f"{hit[key][k]:6d}" for k in kinds) + f"  {sum(hit[key].values())}")
