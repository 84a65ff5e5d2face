# docs/quality.md, session 20. Usage:
#   .venv/bin/python docs/studies/conditional_error.py STYLE SEED MODEL_DIR [MEMORY] [PRIOR]
# Offline, shipped model and engine (every rule on, as shipped): each stream's (own-scaled,
# whitened) errors e_t against a *per-stream conditional* error: each channel's error less
# what the stream's other channels' errors say about it, z_f = (P e)_f / sqrt(P_ff) with
# P = S^-1 and S the stream's own EW covariance of e over ~MEMORY readings (before the
# reading), pooled with PRIOR readings of the identity. A square edge moves every channel of
# a stream in its own fixed proportions; one channel stepping away does not. Statistics: the
# largest |.| over channels (the peak rule's) and of an EW mean over ~10 readings (the
# sustained rule's kind); thresholds by the budget's fit on the history replayed cold, as
# seasonal_profile.py. Labels and clean false clusters as there (first 200 readings apart).
import sys
from pathlib import Path
import numpy as np
from detector.artifacts import load_current
from training.budget import cluster_peaks, rate_level
from training.calibrate import run_engine
from training.fleet.styles import generate
style, seed, mdir = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
M = float(sys.argv[4]) if len(sys.argv) > 4 else 1000.0
K = float(sys.argv[5]) if len(sys.argv) > 5 else 100.0
b = load_current(mdir)
fl = generate(style, seed, streams=12)
rate = 0.4 / 1.4 * 0.5 / 1e4
W = 200  # leading readings counted apart (the covariance's warm-up)


def ew(x, span):
    a = 2 / (span + 1)
    out = np.empty_like(x)
    m = np.zeros(x.shape[1])
    for t in range(len(x)):
        m = m + a * (x[t] - m)
        out[t] = m
    return out


def conditional(e):
    F = e.shape[1]
    S = np.zeros((F, F))
    n = 0.0
    z = np.empty_like(e)
    for t in range(len(e)):
        C = (n * S + K * np.eye(F)) / (n + K)
        P = np.linalg.inv(C + 1e-6 * np.eye(F))
        z[t] = (P @ e[t]) / np.sqrt(np.diag(P))
        n = min(n + 1, M / 2)
        S += (np.outer(e[t], e[t]) - S) / n
    return z


def replay(series):
    a = run_engine(b.module, b.scaler, b.features, series, b.scoring, collect_from=[0] * len(series))
    out = []
    for i, s in enumerate(series):
        r = a.of_stream(i)
        e = np.zeros((len(s), len(b.features)), np.float64)
        e[r.index] = r.errors
        z = conditional(e)
        out.append((np.abs(e).max(1), np.abs(z).max(1),
                    np.abs(ew(e, 10)).max(1), np.abs(ew(z, 10)).max(1)))
    return out


H, C, A = replay(fl.history), replay(fl.clean), replay(fl.anomalous)
sid = lambda L: np.concatenate([np.full(len(x), i) for i, x in enumerate(L)]).astype(np.int64)
ids = [s.stream_id for s in fl.anomalous]
names = ("error, peak", "conditional, peak", "error, EW10", "conditional, EW10")
for k, name in enumerate(names):
    h = [x[k][W:] for x in H]
    thr = rate_level(np.concatenate(h), sid(h), rate, 10, 3.5)
    cw = [x[k][W:] for x in C]
    cc = [x[k][:W] for x in C]
    fw = cluster_peaks(np.concatenate(cw), sid(cw), thr, 10).size
    fc = cluster_peaks(np.concatenate(cc), sid(cc), thr, 10).size
    caught = {}
    for L in fl.labels:
        i = ids.index(L.stream_id)
        s = fl.anomalous[i]
        per = np.median(np.diff(s.ts_ms))
        m = (s.ts_ms >= L.start_ms) & (s.ts_ms <= L.end_ms + 5 * per)
        c = caught.setdefault(L.kind, [0, 0])
        c[0] += bool((A[i][k][m] >= thr).any())
        c[1] += 1
    tot = sum(v[0] for v in caught.values())
    n = sum(v[1] for v in caught.values())
    print(f"{style} s{seed} M{M:g} K{K:g} {name}: thr {thr:.2f}; clean false after {W}: {fw}, "
          f"in first {W}: {fc}; caught {tot}/{n}:",
          " ".join(f"{k[:5]} {v[0]}/{v[1]}" for k, v in sorted(caught.items())), flush=True)
