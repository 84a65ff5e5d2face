# docs/quality.md, session 28: the difference rule judges x_t - x_{t-1}; on a channel whose
# noise is white that carries the noise twice (sqrt 2 sigma). Judged against a smoothed
# level instead, e = x_t - L_{t-1} with L an exponential mean (weight 1/K) of the readings
# given, the noise counts ~once (sqrt(1 + 1/(2K-1)) sigma): a level shift's onset and a
# drift's return stand ~1.35x higher. Offline and shaped like the product, as diff_rule.py
# (the stream's own online spread of e pooled with the fleet's prior, the largest over
# channels, one threshold by the budget's tail fit at SHARE per 10,000 on the history
# replayed cold), alone and OR-ed with anomalyd's shipped incidents. K fixed before the
# run (5, the difference rule's short window).
# Usage: PYTHONPATH=. .venv/bin/python docs/studies/innovation_rule.py FLEET_OUT STREAMS SEED[,..] [STYLE..]
import os, sys
import numpy as np
import docs.studies.diff_rule as dr
from docs.studies.level_rule import scores

K = float(os.environ.get("K", 5))


def innovations(v):
    """(T, F) each reading minus the EW mean (1/K) of the channel's readings before it;
    nan where not given or where the channel gave nothing before."""
    lev = np.full(v.shape[1], np.nan)
    out = np.full_like(v, np.nan)
    for t, x in enumerate(v):
        ok = ~np.isnan(x)
        out[t, ok] = x[ok] - lev[ok]
        first = ok & np.isnan(lev)
        lev[first] = x[first]
        lev[ok] += (x[ok] - lev[ok]) / K
    return out


if __name__ == "__main__":
    import docs.studies.level_rule as lr
    lr.gaps = innovations  # level_rule.scores judges what gaps() returns
    dr.SHARE = float(os.environ.get("SHARE", 0.09))
    dr.study(sys.argv[1:], "innov rule", innovations, scores)
