# docs/quality.md, session 33: what the number of channels does to the shift rule alone.
# A style's fleet with K iid Gaussian channels appended (10 + 3 N(0,1), as benchmark_channels'
# EXTRA=noise); per K: the threshold the budget's tail fit sets on the history's statistic
# (cold starts, the rule's share of 0.5 / 10k, floor SHIFT_FLOOR), which channel sets the
# history's largest clusters, and the labels the statistic alone reaches at that threshold.
# VARIANT (env) swaps the statistic's covariance for one under test; nothing else changes.
# Usage: [VARIANT=...] PYTHONPATH=. .venv/bin/python docs/studies/shift_channels.py STYLE SEED K [K ...]
import os
import sys
from collections import Counter, defaultdict
from dataclasses import replace

import numpy as np
import torch

from detector.core.incidents import IncidentConfig
from detector.core.shift import ShiftConfig
from training.batches import fit_scaler
from training.budget import SHARES, SHIFT_FLOOR, rate_level
from training.data import StreamSeries
from training.fleet.styles import generate
from detector.core.shift import ShiftState, shift_step
from training.data import scaled_padded
from training.shiftcal import shift_prior

torch.set_num_threads(1)
GAP = IncidentConfig().resolve_after
RATE = SHARES["shift"] / sum(SHARES.values()) * 0.5e-4
WARMUP = 20
VARIANT = os.environ.get("VARIANT", "")


def widen(series, rng, k):
    return [StreamSeries(s.stream_id, s.ts_ms, np.concatenate(
        [s.values, 10.0 + 3.0 * rng.standard_normal((len(s.ts_ms), k))], axis=1).astype(np.float32))
        for s in series]


def per_channel(series, sc, cfg):
    """|z_f| (T, F) per series, -inf before the rule decides, every stream cold."""
    f = len(sc.mean)
    xs, lens = scaled_padded(series, sc.mean, sc.std)
    x_all, b = torch.from_numpy(xs), len(series)
    st = ShiftState(torch.zeros(b, f), torch.zeros(b, f), torch.zeros(b, f, f),
                    torch.zeros(b, f), torch.zeros(b))
    prior, hold = torch.tensor(cfg.prior, dtype=torch.float32), torch.zeros(b, dtype=torch.bool)
    out = np.zeros((*xs.shape[:2], f))
    for t in range(xs.shape[1]):  # the padded tail idles past each stream's end: not read
        x = x_all[:, t]
        st, z = shift_step(st, x, ~torch.isnan(x), hold, cfg, prior)
        out[:, t] = z.abs().numpy()
    res = [out[i, : lens[i]] for i in range(b)]
    for r in res:
        r[: WARMUP + cfg.slow] = -np.inf
    return res


def flat(zs):
    sid = np.concatenate([np.full(len(z), i) for i, z in enumerate(zs)])
    return np.concatenate(zs), sid


style, seed = sys.argv[1], int(sys.argv[2])
for k in (int(a) for a in sys.argv[3:]):
    fl = generate(style, seed, 12, 2000, 1500)
    rng = np.random.default_rng(seed)
    hist, clean, anom = (widen(s, rng, k) for s in (fl.history, fl.clean, fl.anomalous))
    sc = fit_scaler(hist, [len(s) for s in hist], 1e-6)
    cfg = ShiftConfig()
    cfg = replace(cfg, prior=shift_prior(hist, sc, cfg), threshold=1.0)
    zhf, sh = flat(per_channel(hist, sc, cfg))
    ff = zhf.shape[1]
    lev = np.array([rate_level(zhf[:, c], sh, RATE, GAP, SHIFT_FLOOR) for c in range(ff)])
    scale = lev / lev.min() if VARIANT == "scale" else np.ones(ff)
    zh = (zhf / scale).max(axis=1)
    thr = max(SHIFT_FLOOR, rate_level(zh, sh, RATE, GAP, SHIFT_FLOOR))
    print("  per-channel levels", np.round(lev, 2), "scale", np.round(scale, 2))
    zc, scl = flat(per_channel(clean, sc, cfg))
    za, sa = flat(per_channel(anom, sc, cfg))
    zc, za = (zc / scale).max(axis=1), (za / scale).max(axis=1)
    ts = np.concatenate([s.ts_ms for s in anom])
    period = np.median(np.diff(anom[0].ts_ms))
    caught, n = Counter(), Counter()
    for lab in fl.labels:
        i = next(j for j, s in enumerate(anom) if s.stream_id == lab.stream_id)
        m = (sa == i) & (ts >= lab.start_ms) & (ts <= lab.end_ms + 5 * period)
        n[lab.kind] += 1
        caught[lab.kind] += bool(m.any() and za[m].max() >= thr)
    false_clean = int(((zc >= thr) & np.r_[True, np.diff((zc >= thr).astype(int)) > 0]).sum())
    q = np.quantile(zh[np.isfinite(zh)], [0.5, 0.99, 0.999])
    print(f"{style} s{seed} K={k:2d} thr {thr:5.2f} q50/99/99.9 {q[0]:.2f}/{q[1]:.2f}/{q[2]:.2f} "
          f"max {zh.max():.2f} clean>thr runs {false_clean} | "
          + " ".join(f"{kd} {caught[kd]}/{n[kd]}" for kd in sorted(n)), flush=True)
