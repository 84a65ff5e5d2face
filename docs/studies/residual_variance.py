# Offline study of docs/quality.md "Session 5": mean-square statistics at equal false rates.
# Usage: .venv/bin/python docs/studies/residual_variance.py STYLE SEED MODEL_DIR
import sys, math, dataclasses
from pathlib import Path
import numpy as np
from detector.artifacts import load_current
from training.calibrate import run_engine
from training.fleet.styles import generate
from training.budget import rate_level, cluster_peaks
from collections import defaultdict
from studylib import setup
style, seed, b, fleet, run = setup()
W = b.scoring.warmup
clean, anom = run(fleet.clean), run(fleet.anomalous)
def ewma(r, s, sq):
    n, f = r.errors.shape
    first = set(np.flatnonzero(np.r_[True, r.stream[1:] != r.stream[:-1]]).tolist())
    e = np.clip(np.where(r.observed, r.errors, 0.0), -10, 10)
    if sq: e = e**2
    a = 2.0/(s+1); acc = np.ones(f) if sq else np.zeros(f); out = np.zeros((n, f))
    for i in range(n):
        if i in first: acc = np.ones(f) if sq else np.zeros(f)
        acc = np.where(r.observed[i], acc + a*(e[i]-acc), acc); out[i] = acc
    return out
cfgs = [("mean",1),("var",10),("var",20),("var",40),("var",80)]
budget = 0.5e-4*0.4
res={}
for kind, s in cfgs:
    sq = kind=="var"
    c, a = ewma(clean, s, sq), ewma(anom, s, sq)
    if sq:
        # log-variance, centred: robust z
        c, a = np.log(c+1e-6), np.log(a+1e-6)
        med = np.median(c, axis=0); scale = c.std(axis=0)
        zc, za = ((c-med)/scale).max(axis=1), ((a-med)/scale).max(axis=1)
    else:
        scale = c.std(axis=0); zc, za = (np.abs(c)/scale).max(axis=1), (np.abs(a)/scale).max(axis=1)
    lvl = rate_level(zc, clean.stream, budget, 10, 0.0); res[(kind,s)] = (lvl, za)
    print(kind, s, f"level {lvl:.2f}")
ts = np.array([fleet.anomalous[i].ts_ms[j] for i, j in zip(anom.stream, anom.index)])
ids = np.array([fleet.anomalous[i].stream_id for i in anom.stream])
period = np.median(np.diff(fleet.anomalous[0].ts_ms))
hit = defaultdict(lambda: defaultdict(int)); tot = defaultdict(int); marg = defaultdict(lambda: defaultdict(list))
for L in fleet.labels:
    m = (ids == L.stream_id) & (ts >= L.start_ms) & (ts <= L.end_ms + 5*period)
    tot[L.kind]+=1; anyh=False
    for key,(lvl,za) in res.items():
        mx = za[m].max() if m.any() else 0; marg[L.kind][key].append(mx/lvl)
        if mx>=lvl: hit[L.kind][key]+=1; anyh=True
    hit[L.kind]['any'] += anyh
for k in sorted(tot):
    print(k, tot[k], ' '.join(f"{a}{s}:{hit[k][(a,s)]}({np.median(marg[k][(a,s)]):.2f})" for a,s in cfgs), 'any', hit[k]['any'])
