# docs/quality.md, session 13. Usage: .venv/bin/python docs/studies/lagged_pairs.py STYLE SEED MODEL_DIR [...]
# Lagged opposite-sign pairs: stat(t) = max_c min(|e_t,c|, max |e_s,c| over t-W<=s<t with opposite sign).
# Threshold from the clean history replay by rate_level at a budget share; labels caught vs shipped.
import sys, numpy as np
sys.path.insert(0, "docs/studies")
from numpy.lib.stride_tricks import sliding_window_view as swv
from studylib import setup
from training.calibrate import run_engine
from training.budget import rate_level
style, seed, b, fleet, run = setup()
Ws = [int(w) for w in sys.argv[4].split(",")] if len(sys.argv) > 4 else [1, 60, 200]
def stat(r, W):
    e = np.where(r.observed, r.errors, 0.0).astype(np.float64)
    out = np.zeros(len(e))
    for s in np.unique(r.stream):
        m = np.flatnonzero(r.stream == s); x = e[m]
        pos, neg = np.maximum(x, 0), np.maximum(-x, 0)
        pad = lambda a: np.vstack([np.zeros((W, a.shape[1])), a[:-1]])  # previous W readings, excl. t
        mp = swv(pad(pos), W, axis=0).max(axis=-1); mn = swv(pad(neg), W, axis=0).max(axis=-1)
        out[m] = np.maximum(np.minimum(pos, mn), np.minimum(neg, mp)).max(axis=1)
    return out
hist, clean, anom = (run(s) for s in (fleet.history, fleet.clean, fleet.anomalous))
shipped = run_engine(b.module, b.scaler, b.features, fleet.anomalous, b.scoring, collect_from=[0]*len(fleet.anomalous))
def keyed(r, ser):
    return (np.array([ser[i].stream_id for i in r.stream]), np.array([ser[i].ts_ms[j] for i, j in zip(r.stream, r.index)]))
ids, ts = keyed(anom, fleet.anomalous); sids, sts = keyed(shipped, fleet.anomalous)
period = np.median(np.diff(fleet.anomalous[0].ts_ms))
rate = 0.4 / 1.8 * 0.5 / 1e4
for W in Ws:
    ph, pc, pa = stat(hist, W), stat(clean, W), stat(anom, W)
    thr = rate_level(ph, hist.stream.astype(np.int64), rate, 10, 3.5)
    from training.budget import cluster_peaks
    fc = cluster_peaks(pc, clean.stream.astype(np.int64), thr, 10).size
    caught = {}
    for L in fleet.labels:
        m = (ids == L.stream_id) & (ts >= L.start_ms) & (ts <= L.end_ms + 5 * period)
        ms = (sids == L.stream_id) & (sts >= L.start_ms) & (sts <= L.end_ms + 5 * period)
        hit = bool((pa[m] >= thr).any()); sh = bool(shipped.opened[ms].any())
        c = caught.setdefault(L.kind, [0, 0, 0, 0]); c[0] += hit; c[1] += sh; c[2] += hit and not sh; c[3] += 1
    print(f"{style} s{seed} W={W}: thr {thr:.2f}; clean false clusters {fc} in {len(pc)};",
          " ".join(f"{k[:5]} {v[0]}/{v[3]} (+{v[2]}; shipped {v[1]})" for k, v in sorted(caught.items())), flush=True)
