# docs/quality.md, session 13. Usage: .venv/bin/python docs/studies/seasonal_naive.py STYLE SEED PERIOD_READINGS
# Offline: seasonal persistence x̂_t = x_{t-1} + (x_{t-P} - x_{t-P-1}) against plain persistence,
# per-stream/channel robust z (history MAD), max over channels, threshold by the budget's fit.
import sys, numpy as np
from training.fleet.styles import generate
from training.budget import rate_level, cluster_peaks
style, seed, P = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fl = generate(style, seed, streams=12)
rate = 0.4 / 1.4 * 0.5 / 1e4
def errors(hist, ev, p):
    v = np.vstack([hist.values, ev.values]).astype(np.float64)
    f = v.copy()
    for t in range(1, len(f)):  # forward fill
        m = np.isnan(f[t]); f[t, m] = f[t - 1, m]
    pred = np.full_like(f, np.nan); pred[1:] = f[:-1]
    if p:
        pred[p + 1:] += f[1:-p] - f[:-p - 1]
    e = v - pred
    return e[: len(hist)], e[len(hist):]
for p in (0, P):
    H, C, A = [], [], []
    for h, c, a in zip(fl.history, fl.clean, fl.anomalous):
        eh, ec = errors(h, c, p); _, ea = errors(h, a, p)
        sc = 1.4826 * np.nanmedian(np.abs(eh[p + 2:] - np.nanmedian(eh[p + 2:], 0)), 0)
        z = lambda e: np.nanmax(np.abs(e / sc), 1)
        H.append(z(eh[p + 2:])); C.append(z(ec)); A.append(z(ea))
    sid = lambda L: np.concatenate([np.full(len(x), i) for i, x in enumerate(L)]).astype(np.int64)
    h = np.concatenate(H); thr = rate_level(np.nan_to_num(h), sid(H), rate, 10, 3.5)
    fc = cluster_peaks(np.nan_to_num(np.concatenate(C)), sid(C), thr, 10).size
    caught = {}
    ids = [s.stream_id for s in fl.anomalous]
    for L in fl.labels:
        i = ids.index(L.stream_id); s = fl.anomalous[i]
        per = np.median(np.diff(s.ts_ms))
        m = (s.ts_ms >= L.start_ms) & (s.ts_ms <= L.end_ms + 5 * per)
        k = caught.setdefault(L.kind, [0, 0]); k[0] += bool((np.nan_to_num(A[i][m]) >= thr).any()); k[1] += 1
    tot = sum(v[0] for v in caught.values())
    print(f"{style} s{seed} P={p or 'none'}: threshold {thr:.1f}, clean false clusters {fc} in {sum(map(len, C))}, caught {tot}/{len(fl.labels)}:",
          " ".join(f"{k[:5]} {v[0]}/{v[1]}" for k, v in sorted(caught.items())), flush=True)
