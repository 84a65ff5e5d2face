# docs/quality.md, session 34: does one channel's tail set the difference rule's threshold
# for all of them, as it did the shift rule's (session 33)? A style's fleet with EXTRA
# channels appended (benchmark_channels.widen: noise, spiky, bursts, held, commands); the
# rule alone, model-free: its prior from the history, each of its 2F per-channel
# statistics |d|/spread, |m|/spread per reading (every stream cold), each one's level at the
# rule's budget rate; then the threshold on the plain max (today) and, with VARIANT=scale,
# on max_c z_c / scale_c (scale_c = level_c / least level, levels floored at the floor),
# and the labels the statistic alone reaches at that threshold, the clean runs over it.
# Usage: EXTRA=noise [VARIANT=scale] PYTHONPATH=. .venv/bin/python docs/studies/difference_channels.py STYLE SEED K
import os
import sys
from collections import Counter
from dataclasses import replace

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from benchmark_channels import KIND, widen  # noqa: E402

from detector.core.difference import PRIOR, SHORT, CLIP, DifferenceConfig  # noqa: E402
from detector.core.incidents import IncidentConfig  # noqa: E402
from detector.core.spread import pooled_spread, spread_step  # noqa: E402
from training.batches import fit_scaler  # noqa: E402
from training.budget import SHARES  # noqa: E402
from training.data import scaled_padded  # noqa: E402
from training.diffcal import difference_prior  # noqa: E402
from training.fleet.styles import generate  # noqa: E402
from training.tail import rate_level  # noqa: E402

torch.set_num_threads(1)
GAP = IncidentConfig().resolve_after
RATE = SHARES["difference"] / sum(SHARES.values()) * 0.5e-4
FLOOR, WARMUP = 3.5, 20
VARIANT = os.environ.get("VARIANT", "")


def per_channel(series, sc, prior, memory):
    xs, lens = scaled_padded(series, sc.mean, sc.std)
    b, f = len(series), xs.shape[2]
    last, run = torch.zeros(b, SHORT * f), torch.zeros(b, f)
    n, ms = torch.zeros(b, 2 * f), torch.zeros(b, 2 * f)  # a count per change (layout 11)
    x_all, out = torch.from_numpy(xs), np.zeros((*xs.shape[:2], 2 * f))
    for t in range(xs.shape[1]):  # difference_step, keeping every channel's z
        x = x_all[:, t]
        observed = ~torch.isnan(x)
        prev, old = last[:, :f], last[:, (SHORT - 1) * f:]
        now = torch.where(observed, x, prev)
        change = torch.cat([now - prev, (now - old) / SHORT], dim=1).abs()
        judged = torch.cat([observed & (run >= 1), observed & (run >= SHORT)], dim=1)
        spread = pooled_spread(prior, n, ms, PRIOR)
        out[:, t] = torch.where(judged, change / spread, torch.zeros_like(change)).numpy()
        n, ms = spread_step(change, spread, CLIP, judged, n, ms, memory)
        run = torch.where(observed, (run + 1).clamp(max=2.0**24), torch.zeros_like(run))
        last = torch.cat([now, last[:, : (SHORT - 1) * f]], dim=1)
    res = [out[i, : lens[i]] for i in range(b)]
    for r in res:
        r[:WARMUP] = -np.inf
    return res


def flat(zs):
    return np.concatenate(zs), np.concatenate([np.full(len(z), i) for i, z in enumerate(zs)])


style, seed, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fl = generate(style, seed, 12, 2000, 1500)
rng = np.random.default_rng(seed)
hist = widen(fl.history, rng, k)
end = [float(h.values[-1, -1]) for h in hist]
clean, anom = widen(fl.clean, rng, k, end), widen(fl.anomalous, rng, k, end)
sc = fit_scaler(hist, [len(s) for s in hist], 1e-6)
cfg = DifferenceConfig()
prior = torch.tensor(difference_prior(hist, sc), dtype=torch.float32)
zhf, sh = flat(per_channel(hist, sc, prior, cfg.memory))
lev = np.array([rate_level(zhf[:, c], sh, RATE, GAP, FLOOR) for c in range(zhf.shape[1])])
scale = lev / lev.min() if VARIANT == "scale" else np.ones(len(lev))
zh = (zhf / scale).max(axis=1)
thr = rate_level(zh, sh, RATE, GAP, FLOOR)
f = zhf.shape[1] // 2
print(f"{style} s{seed} {KIND} K={k} levels d {np.round(lev[:f], 1)} m {np.round(lev[f:], 1)}")
zc, _ = flat(per_channel(clean, sc, prior, cfg.memory))
za, sa = flat(per_channel(anom, sc, prior, cfg.memory))
zc, za = (zc / scale).max(axis=1), (za / scale).max(axis=1)
ts = np.concatenate([s.ts_ms for s in anom])
period = np.median(np.diff(anom[0].ts_ms))
caught, tot = Counter(), Counter()
for lab in fl.labels:
    i = next(j for j, s in enumerate(anom) if s.stream_id == lab.stream_id)
    m = (sa == i) & (ts >= lab.start_ms) & (ts <= lab.end_ms + 5 * period)
    tot[lab.kind] += 1
    caught[lab.kind] += bool(m.any() and za[m].max() >= thr)
over = zc >= thr
runs = int((over & np.r_[True, ~over[:-1]]).sum())
print(f"  {VARIANT or 'plain'} thr {thr:5.2f} clean runs {runs} | "
      + " ".join(f"{kd} {caught[kd]}/{tot[kd]}" for kd in sorted(tot)), flush=True)
