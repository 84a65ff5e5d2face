# docs/quality.md, session 8: the sustained average against the same minus a slow average
# of the signed errors (a model that extrapolates badly where a wandering channel goes past
# its history errs with one sign for hundreds of readings), at equal false rate.
# Usage: .venv/bin/python docs/studies/sustained_slow.py STYLE SEED MODEL_DIR
"""Offline: sustained statistics vs labels caught at equal false rate (fleet-wide scale)."""
from collections import defaultdict
import numpy as np
from training.budget import rate_level, cluster_peaks
from studylib import setup
style, seed, b, fleet, run = setup()
clean, anom = run(fleet.clean), run(fleet.anomalous)

def ew(x, span, first, correct=False):
    a = 2.0 / (span + 1); out = np.empty_like(x); acc = np.zeros(x.shape[1]); n = 0
    for i in range(len(x)):
        if i in first: acc[:] = 0; n = 0
        acc = acc + a * (x[i] - acc); n += 1
        out[i] = acc / (1 - (1 - a) ** n) if correct else acc
    return out

def stats(r):
    first = set(np.flatnonzero(np.r_[True, r.stream[1:] != r.stream[:-1]]).tolist())
    e = np.clip(np.where(r.observed, r.errors, 0.0), -8, 8)
    s20 = ew(e, 20, first)
    out = {"sus20": s20}
    for slow in (300, 1000):
        out[f"sus20-{slow}"] = s20 - ew(e, slow, first)  # from 0: a cold stream's as before
    return out
sc, sa = stats(clean), stats(anom)
budget = 0.2e-4
ts = np.array([fleet.anomalous[i].ts_ms[j] for i, j in zip(anom.stream, anom.index)])
ids = np.array([fleet.anomalous[i].stream_id for i in anom.stream])
period = np.median(np.diff(fleet.anomalous[0].ts_ms))
inlab = np.zeros(len(ts), bool)
for L in fleet.labels:
    inlab |= (ids == L.stream_id) & (ts >= L.start_ms) & (ts <= L.end_ms + 5 * period)
print(style, seed)
for name in sc:
    scale = sc[name].std(axis=0)[None, :]
    zc = (np.abs(sc[name]) / scale).max(axis=1); za = (np.abs(sa[name]) / scale).max(axis=1)
    lvl = rate_level(zc, clean.stream, budget, 10, 0.0)
    fc = len(cluster_peaks(zc, clean.stream, lvl, 10))
    fa = len(cluster_peaks(np.where(inlab, 0, za), anom.stream, lvl, 10))
    hit = defaultdict(int)
    for L in fleet.labels:
        m = (ids == L.stream_id) & (ts >= L.start_ms) & (ts <= L.end_ms + 5 * period)
        if m.any() and za[m].max() >= lvl: hit[L.kind] += 1
    print(f"{name:12s} level {lvl:5.2f} false clean {fc:2d} anom {fa:2d} caught {sum(hit.values()):2d} {dict(sorted(hit.items()))}", flush=True)
