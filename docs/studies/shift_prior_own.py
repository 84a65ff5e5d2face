# docs/quality.md, session 39: the shift rule's statistic (the shipped shift_step, cold
# replays of 12-stream fleets) with the prior pooled into each stream's covariance as a full
# matrix: SHRINK=a,.. the fleet's mean correlation of d (weight a) at each channel's typical
# variance; OWN=a,.. the stream's own running correlation (weight a) at those variances;
# against the shipped diagonal ("whole"). Levels and reach as shift_prior_kind.py (session 37).
# Usage: SHRINK=1 OWN=0.9,1.0 PYTHONPATH=. .venv/bin/python docs/studies/shift_prior_own.py STYLE 2,3
import os, sys
from collections import defaultdict
import numpy as np, torch
import detector.core.shift as sh
from detector.core.scoring import Scaler
from detector.core.shift import RIDGE, FLOOR, PRIOR_WEIGHT, ShiftConfig
from training.fleet.styles import generate
from training.shiftcal import shift_prior, shift_walk
from training.tail import rate_level
READY = 210
_orig = sh.standardised_residuals

ALPHA = [None]
def full_residuals(cov, weight, d, prior):
    if prior.dim() == 1 and ALPHA[0] is None:
        return _orig(cov, weight, d, prior)
    if prior.dim() == 1:  # the stream's own correlation at the fleet's variances, shrunk by ALPHA
        dg = torch.diagonal(cov, dim1=1, dim2=2).clamp(min=1e-12).sqrt()
        R = cov / (dg.unsqueeze(2) * dg.unsqueeze(1))
        a = ALPHA[0]
        eye = torch.eye(len(prior))
        Dp = prior.sqrt()
        prior = (a * R + (1 - a) * eye) * (Dp.view(1, -1, 1) * Dp.view(1, 1, -1))
        pdg = prior.diagonal(dim1=1, dim2=2)
        share = (weight / (weight + PRIOR_WEIGHT)).view(-1, 1)
        diag = share * torch.diagonal(cov, dim1=1, dim2=2) + (1 - share) * pdg
        lift = RIDGE * diag + FLOOR * pdg
        pooled = share.unsqueeze(2) * cov + (1 - share).unsqueeze(2) * prior + torch.diag_embed(lift)
        p = torch.linalg.inv_ex(pooled)[0]
        pdd = (p @ d.unsqueeze(2)).squeeze(2)
        return pdd / torch.diagonal(p, dim1=1, dim2=2).clamp(min=1e-30).sqrt()
    share = (weight / (weight + PRIOR_WEIGHT)).view(-1, 1)
    pd_ = torch.diagonal(prior)
    diag = share * torch.diagonal(cov, dim1=1, dim2=2) + (1 - share) * pd_
    lift = RIDGE * diag + FLOOR * pd_
    pooled = share.unsqueeze(2) * cov + (1 - share).unsqueeze(2) * prior + torch.diag_embed(lift)
    p = torch.linalg.inv_ex(pooled)[0]
    pdd = (p @ d.unsqueeze(2)).squeeze(2)
    return pdd / torch.diagonal(p, dim1=1, dim2=2).clamp(min=1e-30).sqrt()
sh.standardised_residuals = full_residuals

def mean_corr(tails):
    rs = []
    for d in tails:
        s = d.T @ d / len(d); sd = np.sqrt(np.clip(np.diag(s), 1e-30, None))
        rs.append(s / np.outer(sd, sd))
    return np.mean(rs, axis=0)

def main():
    style, seeds = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
    shrink = [float(x) for x in os.environ.get("SHRINK", "1").split(",") if x]
    cfg = ShiftConfig()
    rows = defaultdict(lambda: [[], []])
    for s in seeds:
        fl = generate(style, s, streams=12)
        h = np.concatenate([x.values for x in fl.history]).astype(np.float64)
        sc = Scaler(tuple(np.nanmean(h, 0)), tuple(np.nanstd(h, 0)))
        ds, _ = shift_walk(fl.history, sc, cfg, torch.ones(len(sc.mean)))
        tails = [d[cfg.slow:] for d in ds]
        whole = np.array(shift_prior(fl.history, sc, cfg))
        R = mean_corr(tails)
        priors = {"whole": torch.tensor(whole, dtype=torch.float32)}
        for a in [float(x) for x in os.environ.get("OWN", "").split(",") if x]:
            priors[f"own{a}"] = ("own", a)
        for a in shrink:  # a: the fleet correlation's weight (1: all of it)
            Ra = a * R + (1 - a) * np.eye(len(R))
            D = np.sqrt(whole)
            priors[f"full{a}"] = torch.tensor(Ra * np.outer(D, D), dtype=torch.float32)
        for name, p in priors.items():
            ALPHA[0] = None
            c = ShiftConfig(cfg.fast, cfg.slow, cfg.memory, tuple(float(v) for v in whole), 1.0)
            if isinstance(p, tuple):
                ALPHA[0] = p[1]; p = torch.tensor(whole, dtype=torch.float32)
            rows[name][0] += [z.max(1) for z in shift_walk(fl.clean, sc, c, p)[1]]
            rows[name][1].append((fl, [z.max(1) for z in shift_walk(fl.anomalous, sc, c, p)[1]]))
        print(style, s, "offdiag mean |R|", np.round(np.abs(R - np.eye(len(R))).sum() / (len(R)**2 - len(R)), 3), flush=True)
    for name, (clean, bad) in rows.items():
        for z in clean: z[:READY] = 0
        stream = np.concatenate([np.full(len(z), i) for i, z in enumerate(clean)])
        lvl = rate_level(np.concatenate(clean).astype(np.float64), stream, 1e-4, 10, 0.0)
        hit, tot = defaultdict(int), defaultdict(int)
        for fl, zs in bad:
            for s, z in zip(fl.anomalous, zs, strict=True):
                z[:READY] = 0
                period = np.median(np.diff(s.ts_ms))
                for lab in (l for l in fl.labels if l.stream_id == s.stream_id):
                    m = (s.ts_ms >= lab.start_ms) & (s.ts_ms <= lab.end_ms + 5 * period)
                    tot[lab.kind] += 1
                    hit[lab.kind] += int(m.any() and z[m].max() >= lvl)
        print(f"{style} {seeds} prior {name:9s} level {lvl:6.2f} " + " ".join(f"{k[:6]} {hit[k]}/{tot[k]}" for k in sorted(tot)), flush=True)
main()
