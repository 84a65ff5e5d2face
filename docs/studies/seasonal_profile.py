# docs/quality.md, session 19. Usage:
#   .venv/bin/python docs/studies/seasonal_profile.py STYLE SEED MODEL_DIR PERIOD_READINGS [ALPHA]
# Offline, shipped model and engine: each stream's and channel's (own-scaled, whitened) error
# minus a per-phase exponentially weighted profile of its own past errors at that phase of
# the cycle (phase = round(ts / cadence) mod P; the profile is the mean of the errors seen at that phase, then
# an exponential average at ALPHA per period, and
# starts at 0 on every cold start), against the shipped error. Statistic: the largest |.|
# over channels (the peak rule's); threshold by the budget's fit on the history replayed
# cold, as seasonal_naive.py. Labels and clean false clusters counted after each segment's
# first P readings (the profile's warm-up) and, for the profile, within them.
import sys
from pathlib import Path
import numpy as np
from detector.artifacts import load_current
from training.budget import cluster_peaks, rate_level
from training.calibrate import run_engine
from training.fleet.styles import generate
style, seed, mdir, P = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
alpha = float(sys.argv[5]) if len(sys.argv) > 5 else 0.3
b = load_current(mdir)
fl = generate(style, seed, streams=12)
rate = 0.4 / 1.4 * 0.5 / 1e4


def replay(series):
    a = run_engine(b.module, b.scaler, b.features, series, b.scoring, collect_from=[0] * len(series))
    out = []
    for i, s in enumerate(series):
        r = a.of_stream(i)
        e = np.zeros((len(s), len(b.features)), np.float64)
        e[r.index] = r.errors
        cad = float(np.median(np.diff(s.ts_ms)))
        phase = (np.round(s.ts_ms / cad).astype(np.int64)) % P
        prof = np.zeros((P, e.shape[1]))
        seen = np.zeros(P)
        res = np.empty_like(e)
        for t in range(len(e)):
            p = phase[t]
            res[t] = e[t] - prof[p]
            seen[p] += 1
            prof[p] += max(alpha, 1 / seen[p]) * (e[t] - prof[p])  # a mean until 1/alpha
        out.append((np.abs(e).max(1), np.abs(res).max(1)))
    return out


H, C, A = replay(fl.history), replay(fl.clean), replay(fl.anomalous)
sid = lambda L: np.concatenate([np.full(len(x), i) for i, x in enumerate(L)]).astype(np.int64)
ids = [s.stream_id for s in fl.anomalous]
for k, name in ((0, "shipped error"), (1, f"minus profile (alpha {alpha})")):
    h = [x[k][P:] for x in H]
    thr = rate_level(np.concatenate(h), sid(h), rate, 10, 3.5)
    cw = [x[k][P:] for x in C]
    cc = [x[k][:P] for x in C]
    fw = cluster_peaks(np.concatenate(cw), sid(cw), thr, 10).size
    fc = cluster_peaks(np.concatenate(cc), sid(cc), thr, 10).size
    caught, total, early = {}, 0, 0
    for L in fl.labels:
        i = ids.index(L.stream_id)
        s = fl.anomalous[i]
        per = np.median(np.diff(s.ts_ms))
        m = (s.ts_ms >= L.start_ms) & (s.ts_ms <= L.end_ms + 5 * per)
        if np.flatnonzero(m)[0] < P:
            early += 1
            continue
        c = caught.setdefault(L.kind, [0, 0])
        c[0] += bool((A[i][k][m] >= thr).any())
        c[1] += 1
    tot = sum(v[0] for v in caught.values())
    n = sum(v[1] for v in caught.values())
    print(f"{style} s{seed} {name}: threshold {thr:.2f}; clean false clusters after P {fw} "
          f"in {sum(map(len, cw))}, in first P {fc} in {sum(map(len, cc))}; caught {tot}/{n} "
          f"(labels starting in the first P left out: {early}):",
          " ".join(f"{k[:5]} {v[0]}/{v[1]}" for k, v in sorted(caught.items())), flush=True)
