# docs/quality.md, session 31: a level shift is a step and a step back 20-60 readings later.
# Each step alone is ~3.5 spreads of the one-step change (5 u / sqrt 2 u, by the definition
# of u, whatever the noise's colour) -- under any single-reading threshold at one false
# incident per 10,000 -- but the pair together is ~5. Offline and shaped like the product,
# as diff_rule.py: per stream and channel the one-step change d in the stream's own online
# spread (pooled with the fleet's prior, winsorised at CLIP), signed and capped at +-CAP;
# per reading, the largest over channels of (c_{t-K} - c_t) / sqrt 2 over K in [KMIN, KMAX]
# for steps of opposite sign (a step back), else |c_t| / sqrt 2; one fleet-wide threshold
# by the budget's tail fit on the history replayed cold at SHARE per 10,000. KMIN skips
# the change's own lag-1 anticorrelation (a single noisy reading is a step and a step back
# one reading later). Constants fixed before the run.
# Usage: PYTHONPATH=. .venv/bin/python docs/studies/pair_rule.py FLEET_OUT STREAMS SEED[,..] [STYLE..]
import os, sys
import numpy as np
import docs.studies.diff_rule as dr
from docs.studies.diff_rule import CLIP, MEMORY, PRIOR

KMIN, KMAX = int(os.environ.get("KMIN", 3)), int(os.environ.get("KMAX", 80))
CAP = float(os.environ.get("CAP", 4.0))


def changes(v):
    return dr.stats(v)[0]


def signed_z(v, prior):
    """(T, F) each reading's change over the stream's online spread; 0 where unobserved."""
    d = changes(v)
    n, ms = 0, np.zeros(d.shape[1])
    out = np.zeros_like(d)
    for t in range(len(d)):
        s = np.sqrt((PRIOR * prior**2 + n * ms) / (PRIOR + n))
        a = d[t]
        ok = ~np.isnan(a)
        out[t] = np.where(ok, np.nan_to_num(a) / s, 0.0)
        if ok.any():
            n = min(n + 1, MEMORY)
            c = np.minimum(np.abs(np.nan_to_num(a)), CLIP * s)
            ms = np.where(ok, ms + (c * c - ms) / n, ms)
    return out


def scores(v, prior):
    c = np.clip(signed_z(v, prior), -CAP, CAP)  # (T, F)
    t_, f = c.shape
    pad = np.concatenate([np.zeros((KMAX, f)), c])
    # window of c_{t-K}, K = KMIN..KMAX: rows t .. in pad are t + KMAX - K
    win = np.stack([pad[KMAX - k : KMAX - k + t_] for k in range(KMIN, KMAX + 1)])  # (W, T, F)
    hi, lo = np.maximum(win.max(axis=0), 0), np.minimum(win.min(axis=0), 0)
    back = np.maximum(hi - np.minimum(c, 0), np.maximum(c, 0) - lo)  # step, then step back
    return (back / np.sqrt(2)).max(axis=1)


if __name__ == "__main__":
    dr.study(sys.argv[1:], "pair rule", changes, scores)
