# docs/quality.md, session 27: does a slower change than the difference rule's (a fast
# exponential mean of a channel minus a slow one) add level shifts and drifts to anomalyd's
# shipped incidents without false ones? Offline and shaped like the product, as
# diff_rule.py: per stream and channel g = EW mean (1/FAST) - EW mean (1/SLOW) of the
# readings given (both start at the stream's first reading of the channel), in the stream's
# own online spread of g (pooled with the fleet's prior, winsorised at CLIP spreads), the
# largest over channels against one fleet-wide threshold set by the budget's tail fit on
# the history replayed cold at SHARE per 10,000. FAST and SLOW fixed before the run (a
# level shift lasts 20-60 readings: the fast mean settles in ~5, the slow one in ~20).
# Then the dev fleets' evaluation segments: the rule alone, anomalyd's shipped incidents
# (the models of fleet_seeds.py OUT) and the two together.
# Usage: PYTHONPATH=. .venv/bin/python docs/studies/level_rule.py FLEET_OUT STREAMS SEED[,..] [STYLE..]
import os, sys
import numpy as np
import docs.studies.diff_rule as dr
from docs.studies.diff_rule import CLIP, MEMORY, PRIOR

FAST, SLOW = float(os.environ.get("FAST", 5)), float(os.environ.get("SLOW", 20))


def gaps(v):
    """(T, F) fast minus slow EW mean of each channel's readings given; nan where not given."""
    f = np.full(v.shape[1], np.nan); s = f.copy()
    out = np.full_like(v, np.nan)
    for t, x in enumerate(v):
        ok = ~np.isnan(x)
        first = ok & np.isnan(f)
        f[first] = s[first] = x[first]
        f[ok] += (x[ok] - f[ok]) / FAST
        s[ok] += (x[ok] - s[ok]) / SLOW
        out[t, ok] = f[ok] - s[ok]
    return out


def scores(v, prior):
    """(T,) the largest |g| over channels in the stream's online spread of it."""
    g = gaps(v)
    n, ms = 0, np.zeros(g.shape[1])
    out = np.zeros(len(g))
    for t, a in enumerate(g):
        sp = np.sqrt((PRIOR * prior**2 + n * ms) / (PRIOR + n))
        ok = ~np.isnan(a)
        out[t] = np.where(ok, np.abs(np.nan_to_num(a)) / sp, 0.0).max()
        if ok.any():
            n = min(n + 1, MEMORY)
            c = np.minimum(np.abs(np.nan_to_num(a)), CLIP * sp)
            ms = np.where(ok, ms + (c * c - ms) / n, ms)
    return out


if __name__ == "__main__":
    dr.SHARE = float(os.environ.get("SHARE", 0.09))  # level() reads it there
    dr.study(sys.argv[1:], "gap rule", gaps, scores)
