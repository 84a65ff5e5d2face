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
from pathlib import Path
import numpy as np
import docs.studies.diff_rule as dr
from docs.studies.diff_rule import CLIP, MEMORY, PRIOR, level, rows_of, union
from training.fleet.evaluate import _pool, _table, TOLERANCE_READINGS, replay_engine
from training.fleet.score import COLD_READINGS, clean_rates, label_scores
from training.fleet.styles import STYLES, generate

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
    out, streams = Path(sys.argv[1]), int(sys.argv[2])
    seeds = [int(s) for s in sys.argv[3].split(",")]
    dr.SHARE = float(os.environ.get("SHARE", 0.09))  # level() reads it there
    summary = {}
    for style in sys.argv[4:] or list(STYLES):
        runs = []
        for seed in seeds:
            fl = generate(style, seed, streams, 2000, 1500)
            hist = np.concatenate([s.values for s in fl.history]).astype(np.float64)
            mu, sd = np.nanmean(hist, axis=0), np.nanstd(hist, axis=0)
            unit = lambda s: (s.values.astype(np.float64) - mu) / sd
            per = [np.nanmedian(np.abs(gaps(unit(s))), axis=0) * 1.4826 for s in fl.history]
            prior = np.maximum(np.median(np.stack(per), axis=0), 1e-6)
            zh = [scores(unit(s), prior) for s in fl.history]
            thr = level(zh)
            rule = tuple(rows_of(seg, [scores(unit(s), prior) for s in seg], thr)
                         for seg in (fl.clean, fl.anomalous))
            model = out / style / f"s{seed}" / "model"
            eng = (replay_engine(model, fl.clean), replay_engine(model, fl.anomalous))
            both = (union(eng[0], rule[0]), union(eng[1], rule[1]))
            tol = TOLERANCE_READINGS * round(fl.style.period_s * 1000)
            run = {}
            for name, (c, a) in (("anomalyd", eng), ("gap rule", rule), ("both", both)):
                run[name] = {"anomalous": label_scores(a, fl.labels, tol), "clean": clean_rates(c, COLD_READINGS)}
            runs.append(run)
            print(f"{style} seed {seed}: threshold {thr:.2f}", file=sys.stderr, flush=True)
        summary[style] = {name: _pool(runs, name) for name in runs[0]}
        print(_table(summary), flush=True)
