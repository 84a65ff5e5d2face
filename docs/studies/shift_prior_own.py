# docs/quality.md, session 39: the shift rule's statistic (the shipped shift_step, cold
# replays of 12-stream fleets) with the prior pooled into each stream's covariance as a full
# matrix: SHRINK=a,.. the fleet's mean correlation of d (weight a) at each channel's typical
# variance; OWN=a,.. the stream's own running correlation (weight a) at those variances;
# against the shipped diagonal ("whole"). Levels and reach as shift_prior_kind.py (session 37).
# Usage: SHRINK=1 OWN=0.9,1.0 PYTHONPATH=. .venv/bin/python docs/studies/shift_prior_own.py STYLE 2,3
import os
import sys
from collections import defaultdict

import numpy as np
import torch

import detector.core.shift as sh
from detector.core.scoring import Scaler
from detector.core.shift import FLOOR, PRIOR_WEIGHT, RIDGE, ShiftConfig
from docs.studies.shift_prior_kind import replace_prior, report
from training.fleet.styles import generate
from training.shiftcal import shift_prior, shift_walk

_shipped = sh.standardised_residuals
OWN: list[float | None] = [None]  # the weight of the stream's own correlation; None: off


def pooled_residuals(cov, weight, d, prior):
    """The shipped statistic, its prior a full (F, F) matrix (the fleet's) or, with OWN set,
    the stream's own running correlation at the prior's variances."""
    if prior.dim() == 1 and OWN[0] is None:
        return _shipped(cov, weight, d, prior)
    if prior.dim() == 1:
        sd = torch.diagonal(cov, dim1=1, dim2=2).clamp(min=1e-12).sqrt()
        own = cov / (sd.unsqueeze(2) * sd.unsqueeze(1))
        corr = OWN[0] * own + (1 - OWN[0]) * torch.eye(len(prior))
        prior = corr * (prior.sqrt().view(1, -1, 1) * prior.sqrt().view(1, 1, -1))
    share = (weight / (weight + PRIOR_WEIGHT)).view(-1, 1)
    p_diag = torch.diagonal(prior, dim1=-2, dim2=-1)
    diag = share * torch.diagonal(cov, dim1=1, dim2=2) + (1 - share) * p_diag
    lift = RIDGE * diag + FLOOR * p_diag
    pooled = share.unsqueeze(2) * cov + (1 - share).unsqueeze(2) * prior + torch.diag_embed(lift)
    p = torch.linalg.inv_ex(pooled)[0]
    pd = (p @ d.unsqueeze(2)).squeeze(2)
    return pd / torch.diagonal(p, dim1=1, dim2=2).clamp(min=1e-30).sqrt()


sh.standardised_residuals = pooled_residuals


def mean_corr(tails):
    rs = []
    for d in tails:
        s = d.T @ d / len(d)
        sd = np.sqrt(np.clip(np.diag(s), 1e-30, None))
        rs.append(s / np.outer(sd, sd))
    return np.mean(rs, axis=0)


def main():
    style, seeds = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
    weights = {k: [float(x) for x in os.environ.get(k, d).split(",") if x] for k, d in (("OWN", ""), ("SHRINK", "1"))}
    cfg = ShiftConfig()
    rows = defaultdict(lambda: [[], []])
    for s in seeds:
        fl = generate(style, s, streams=12)
        h = np.concatenate([x.values for x in fl.history]).astype(np.float64)
        sc = Scaler(tuple(np.nanmean(h, 0)), tuple(np.nanstd(h, 0)))
        ds, _ = shift_walk(fl.history, sc, cfg, torch.ones(len(sc.mean)))
        whole = np.array(shift_prior(fl.history, sc, cfg))
        diag = torch.tensor(whole, dtype=torch.float32)
        R = mean_corr([d[cfg.slow :] for d in ds])
        priors = {"whole": (None, diag)}  # name -> (OWN, prior)
        priors |= {f"own{a}": (a, diag) for a in weights["OWN"]}
        for a in weights["SHRINK"]:  # a: the fleet correlation's weight (1: all of it)
            full = (a * R + (1 - a) * np.eye(len(R))) * np.outer(np.sqrt(whole), np.sqrt(whole))
            priors[f"full{a}"] = (None, torch.tensor(full, dtype=torch.float32))
        c = replace_prior(cfg, whole)
        for name, (OWN[0], p) in priors.items():
            rows[name][0] += [z.max(1) for z in shift_walk(fl.clean, sc, c, p)[1]]
            rows[name][1].append((fl, [z.max(1) for z in shift_walk(fl.anomalous, sc, c, p)[1]]))
        off = np.abs(R - np.eye(len(R))).sum() / (len(R) ** 2 - len(R))
        print(style, s, "offdiag mean |R|", np.round(off, 3), flush=True)
    report(style, seeds, rows)


main()
