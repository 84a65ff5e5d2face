# docs/quality.md, session 18. Usage: PYTHONPATH=. .venv/bin/python docs/studies/spike_unwhitened.py STYLE SEED MODEL_DIR
# Offline: the spike rule's pair statistic on the whitened errors (as shipped) against the
# same pairs on the errors before the whitening (each channel's own, equalised, own-scaled).
# Whitening mixes channels: is a cycle's edge on one channel a "pair" on another?
import dataclasses, sys, numpy as np
sys.path.insert(0, "docs/studies")
from studylib import setup
from training.calibrate import run_engine
style, seed, b, fleet, run = setup()
def plain(series):
    sc = dataclasses.replace(b.scoring, threshold=float("inf"), protect_state=False, peak=None,
                             sustained=None, flatline=None, new_range=None, incidents=None, whiten=())
    return run_engine(b.module, b.scaler, b.features, series, sc, collect_from=[b.scoring.warmup] * len(series))
def pairs(r):
    e = np.where(r.observed, r.errors, 0.0)
    return np.where(e * r.e_prev < 0, np.minimum(np.abs(e), np.abs(r.e_prev)), 0.0).max(axis=1)
period = np.median(np.diff(fleet.anomalous[0].ts_ms))
rows = {}
for how, fn in (("whitened", run), ("unwhitened", plain)):
    qh = pairs(fn(fleet.history)); qc = pairs(fn(fleet.clean))
    ra = fn(fleet.anomalous); pa = pairs(ra)
    # the level a clean false pair would need: the history's 0.9999 quantile, as a stand-in for the budget
    thr = float(np.quantile(qh, 0.9999))
    ids = np.array([fleet.anomalous[i].stream_id for i in ra.stream])
    ts = np.array([fleet.anomalous[i].ts_ms[j] for i, j in zip(ra.stream, ra.index)])
    caught = {}
    for L in fleet.labels:
        m = (ids == L.stream_id) & (ts >= L.start_ms) & (ts <= L.end_ms + 5 * period)
        caught.setdefault(L.kind, []).append(bool((pa[m] >= thr).any()))
    print(f"{style} s{seed} {how:10s} hist q.9999 {thr:.2f}  clean top {np.round(np.sort(qc)[-5:], 2)}  clean >= q: {(qc >= thr).sum()}  labels >= q:",
          {k: f"{sum(v)}/{len(v)}" for k, v in sorted(caught.items())})
