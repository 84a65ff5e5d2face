# docs/quality.md, session 37: the shift rule's statistic (the shipped shift_step, cold
# replays of 12-stream fleets) with each of three priors pooled into every stream's
# covariance, each channel's median over the history's streams of: "whole", the variance
# of d (the shipped prior, training.shiftcal.shift_prior); "alone", what the stream's other
# channels leave of it unexplained (least squares, with the rule's ridge); "geometric",
# their geometric mean (measured through the product in session 37 and not kept). The
# statistic max_f |z_f| (no per-channel scale), its level at 1 cluster of exceedances per
# 10,000 clean readings of the clean evaluation segments themselves (in-sample: only the
# comparison between priors means something), labels reached within [start, end + 5].
# PRIORS=a,b runs some.
# Usage: PYTHONPATH=. .venv/bin/python docs/studies/shift_prior_kind.py STYLE SEED[,SEED..]
import os
import sys
from collections import defaultdict

import numpy as np
import torch

from detector.core.scoring import Scaler
from detector.core.shift import RIDGE, ShiftConfig
from training.fleet.styles import generate
from training.shiftcal import shift_prior, shift_walk
from training.tail import rate_level

READY = 10 + 200  # warm-up + slow, as the engine


def unexplained(d: np.ndarray) -> np.ndarray:
    """(F,) per channel, the mean square of ``d`` (T, F) its least-squares regression on
    the other channels' leaves: ``1 / (S^-1)_ff``, ``S`` the mean of ``d d^T`` ridged as
    the rule ridges its covariance."""
    s = d.T @ d / len(d)
    s = s + np.diag(RIDGE * np.diag(s) + 1e-30)
    return 1.0 / np.diag(np.linalg.inv(s))


def main() -> None:
    style, seeds = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
    cfg = ShiftConfig()
    fleets = [generate(style, s, streams=12) for s in seeds]
    rows = defaultdict(lambda: [[], []])  # prior name -> (clean zs, (fleet, anomalous zs))
    for fl in fleets:
        h = np.concatenate([s.values for s in fl.history]).astype(np.float64)
        sc = Scaler(tuple(np.nanmean(h, 0)), tuple(np.nanstd(h, 0)))
        ds, _ = shift_walk(fl.history, sc, cfg, torch.ones(len(sc.mean)))
        tails = [d[cfg.slow :] for d in ds]
        whole = np.array(shift_prior(fl.history, sc, cfg))
        alone = np.median([unexplained(d) for d in tails], axis=0)
        priors = {"whole": whole, "alone": alone, "geometric": np.sqrt(whole * alone)}
        for name, p in priors.items():
            if os.environ.get("PRIORS") and name not in os.environ["PRIORS"].split(","):
                continue
            c = replace_prior(cfg, p)
            pt = torch.tensor(p, dtype=torch.float32)
            rows[name][0] += [z.max(1) for z in shift_walk(fl.clean, sc, c, pt)[1]]
            rows[name][1].append((fl, [z.max(1) for z in shift_walk(fl.anomalous, sc, c, pt)[1]]))
        print(style, fl.seed, {k: np.round(v, 4).tolist() for k, v in priors.items()})
    report(style, seeds, rows)


def report(style: str, seeds: list[int], rows: dict) -> None:
    """Per prior in ``rows`` (name -> (clean |z| maxima, [(fleet, anomalous maxima)])): its
    level at 1 cluster per 10,000 clean readings and the labels of each kind it reaches."""
    for name, (clean, bad) in rows.items():
        for z in clean:
            z[:READY] = 0
        stream = np.concatenate([np.full(len(z), i) for i, z in enumerate(clean)])
        lvl = rate_level(np.concatenate(clean).astype(np.float64), stream, 1e-4, 10, 0.0)
        hit, tot = defaultdict(int), defaultdict(int)
        for fl, zs in bad:
            for s, z in zip(fl.anomalous, zs, strict=True):
                z[:READY] = 0
                period = np.median(np.diff(s.ts_ms))
                for lab in (lab for lab in fl.labels if lab.stream_id == s.stream_id):
                    m = (s.ts_ms >= lab.start_ms) & (s.ts_ms <= lab.end_ms + 5 * period)
                    tot[lab.kind] += 1
                    hit[lab.kind] += int(m.any() and z[m].max() >= lvl)
        print(
            f"{style} {seeds} prior {name:9s} level {lvl:6.2f} "
            + " ".join(f"{k[:6]} {hit[k]}/{tot[k]}" for k in sorted(tot)),
            flush=True,
        )


def replace_prior(cfg: ShiftConfig, p: np.ndarray) -> ShiftConfig:
    return ShiftConfig(cfg.fast, cfg.slow, cfg.memory, tuple(float(v) for v in p), 1.0)


if __name__ == "__main__":
    main()
