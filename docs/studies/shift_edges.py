# docs/quality.md, session 37: the shift rule's statistic with no prior (session 9's
# cross_level.py, the shipped spans and ridge), and the same with its judging (and with
# LEARN=0 its covariance's learning) held for HOLD readings after a common move: two or
# more channels changing by more than K times their own typical one-step change (a
# running median of |x_t - x_t-1| per stream and channel, tracked in log steps). A square
# cycle's edge moves every channel, each with its own lag and smoothing, and the
# regression of one channel's level on the others' misses for a few readings; a level
# shift moves one channel. Levels at 1 cluster per 10,000 clean readings (in-sample).
# Usage: [HOLD=20] [K=6] [LEARN=0|1] PYTHONPATH=. .venv/bin/python \
#     docs/studies/shift_edges.py STYLE SEED[,SEED]
import os
import sys
from collections import defaultdict

import numpy as np

from training.fleet.styles import generate
from training.tail import rate_level

FAST, SLOW, COV, READY, RIDGE = 8, 200, 1000, 210, 0.01
HOLD, K = int(os.environ.get("HOLD", "20")), float(os.environ.get("K", "6"))
LEARN = os.environ.get("LEARN", "1") == "1"  # the covariance learns while held


def stats(series, mu, sd, hold):
    out = []
    for s in series:
        x = (s.values.astype(np.float64) - mu) / sd
        f = x.shape[1]
        a = m = prev = med = None
        C = np.zeros((f, f))
        n, since = 0, 10**9
        z = np.zeros(len(x))
        for t in range(len(x)):
            v = x[t]
            if a is None:
                a = np.where(np.isnan(v), 0.0, v)
                m, prev, med = a.copy(), a.copy(), np.zeros(f)
                continue
            v = np.where(np.isnan(v), a, v)
            step = np.abs(v - prev)
            prev = v
            fresh = (med <= 0) & (step > 0)
            med = np.where(fresh, step, med * np.exp(0.05 * (np.where(step > med, 1, -1))))
            since = 0 if (hold and n > 20 and (step > K * med).sum() >= 2) else since + 1
            a = a + (2 / (FAST + 1)) * (v - a)
            m = m + (2 / (SLOW + 1)) * (v - m)
            d = a - m
            n += 1
            held = since < HOLD
            if n > READY and not held:
                dg = np.diag(C)
                P = np.linalg.inv(C + np.diag(RIDGE * dg + 1e-9))
                z[t] = np.max(np.abs(P @ d) / np.sqrt(np.diag(P)))
            if LEARN or not held:
                C = C + max(2 / (COV + 1), 1.0 / n) * (np.outer(d, d) - C)
        out.append(z)
    return out


def main():
    style, seeds = sys.argv[1], [int(v) for v in sys.argv[2].split(",")]
    for hold in (False, True):
        cz, az = [], []
        for seed in seeds:
            fl = generate(style, seed, streams=12)
            H = np.concatenate([s.values for s in fl.history]).astype(np.float64)
            mu, sd = np.nanmean(H, axis=0), np.nanstd(H, axis=0)
            cz += stats(fl.clean, mu, sd, hold)
            az += [(fl, i, z) for i, z in enumerate(stats(fl.anomalous, mu, sd, hold))]
        cs = np.concatenate([np.full(len(z), i) for i, z in enumerate(cz)])
        lvl = rate_level(np.concatenate(cz), cs, 1e-4, 10, 0.0)
        hit, tot = defaultdict(int), defaultdict(int)
        for fl, i, z in az:
            s = fl.anomalous[i]
            period = np.median(np.diff(s.ts_ms))
            for lab in fl.labels:
                if lab.stream_id != s.stream_id:
                    continue
                msk = (s.ts_ms >= lab.start_ms) & (s.ts_ms <= lab.end_ms + 5 * period)
                tot[lab.kind] += 1
                hit[lab.kind] += int(msk.any() and z[msk].max() >= lvl)
        kinds = sorted(tot)
        name = f"hold {HOLD} K {K:g} learn {int(LEARN)}" if hold else "no prior, no hold"
        print(
            f"{style} {seeds} {name:26s} level {lvl:6.2f} "
            + " ".join(f"{k[:6]} {hit[k]}/{tot[k]}" for k in kinds),
            flush=True,
        )


if __name__ == "__main__":
    main()
