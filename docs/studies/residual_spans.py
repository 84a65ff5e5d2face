# Offline study of docs/quality.md "Session 5: where the residual's evidence runs out".
# Usage: .venv/bin/python docs/studies/residual_spans.py STYLE SEED MODEL_DIR  (a model that
# `anomalyd evaluate fleet --split dev --streams 12 --out DIR` trained: DIR/STYLE/sSEED/model)
"""Offline: at equal clean false-cluster rate, which statistic catches which kind?"""
import sys, math, dataclasses
import numpy as np, torch
from detector.artifacts import load_current
from training.calibrate import run_engine
from training.fleet.styles import generate
from training.budget import rate_level, cluster_peaks
from detector.core.scoring import ScoringConfig

from studylib import setup
style, seed, b, fleet, run = setup()
W = b.scoring.warmup
clean, anom = run(fleet.clean), run(fleet.anomalous)
def ewma_stats(r, spans):
    out = {}
    n, f = r.errors.shape
    first = np.flatnonzero(np.r_[True, r.stream[1:] != r.stream[:-1]])
    e = np.clip(np.where(r.observed, r.errors, 0.0), -10, 10)
    for s in spans:
        a = 2.0/(s+1); acc = np.zeros(f); avg = np.zeros((n, f))
        starts = set(first.tolist())
        for i in range(n):
            if i in starts: acc = np.zeros(f)
            acc = np.where(r.observed[i], acc + a*(e[i]-acc), acc); avg[i] = acc
        out[s] = avg
    return out
spans = (1, 2, 3, 5, 8, 20)
sc, sa = ewma_stats(clean, spans), ewma_stats(anom, spans)
budget = 0.5e-4 * 0.4
res = {}
for s in spans:
    scale = sc[s].std(axis=0)
    zc = (np.abs(sc[s])/scale).max(axis=1); za = (np.abs(sa[s])/scale).max(axis=1)
    lvl = rate_level(zc, clean.stream, budget, 10, 0.0)
    res[s] = (lvl, za)
    print(f"span {s}: level {lvl:.2f} clean clusters>lvl {len(cluster_peaks(zc, clean.stream, lvl, 10))}")
# per label
ts = np.array([fleet.anomalous[i].ts_ms[j] for i, j in zip(anom.stream, anom.index)])
ids = np.array([fleet.anomalous[i].stream_id for i in anom.stream])
period = np.median(np.diff(fleet.anomalous[0].ts_ms))
from collections import defaultdict
hit = defaultdict(lambda: defaultdict(int)); tot = defaultdict(int); marg = defaultdict(lambda: defaultdict(list))
for L in fleet.labels:
    m = (ids == L.stream_id) & (ts >= L.start_ms) & (ts <= L.end_ms + 5*period)
    tot[L.kind] += 1
    anyhit = False
    for s in spans:
        lvl, za = res[s]
        mx = za[m].max() if m.any() else 0
        marg[L.kind][s].append(mx/lvl)
        if mx >= lvl: hit[L.kind][s] += 1; anyhit = True
    if anyhit: hit[L.kind]['any'] += 1
for k in sorted(tot):
    print(k, tot[k], ' '.join(f"s{s}:{hit[k][s]}(med {np.median(marg[k][s]):.2f})" for s in spans), 'any', hit[k]['any'])
