# docs/quality.md, session 26: is the baseline's evidence (one-step differences and their
# 5-reading average, each channel in its own stream's units) worth a rule of anomalyd's?
# Offline and product-shaped: no per-stream history quantile (a live stream may have none);
# each stream's scale of d and m is learnt online from a cold start (EW mean square over
# MEMORY readings, pooled with PRIOR readings of the fleet's scale, winsorised at CLIP x
# spread, as the own-scale statistics are); one fleet-wide threshold, set on the history
# replayed cold by the budget's tail fit (training.tail.rate_level) at SHARE per 10,000. Then the dev
# fleets' evaluation segments: the rule alone, anomalyd's shipped incidents (the models of
# fleet_seeds.py OUT), and the two together (a reading flagged by either).
# It carries a missing value forward and judges the change over the gap (the shipped rule
# does not, 7be4c53); of the fleets it was run on, coloured has no missing cells, mixed 1 %.
# Usage: PYTHONPATH=. .venv/bin/python docs/studies/diff_rule.py FLEET_OUT STREAMS SEED[,..] [STYLE..]
import os, sys
from pathlib import Path
import numpy as np
from training.fleet.evaluate import _pool, _table, TOLERANCE_READINGS, replay_engine
from training.fleet.score import COLD_READINGS, Flagged, clean_rates, incidents_from_flags, label_scores
from training.fleet.styles import STYLES, generate
from training.tail import rate_level

SHORT, MEMORY, PRIOR, CLIP, RESOLVE = 5, 1000, 100.0, 3.0, 10
SHARE = float(os.environ.get("SHARE", 0.2))  # incidents per 10,000 readings


def stats(v):
    """(d, m) (T, F) of one stream in the fleet's scaler units; nan where unobserved."""
    x = v.copy()
    for t in range(1, len(x)):
        gap = np.isnan(x[t]); x[t, gap] = x[t - 1, gap]
    d = np.full_like(x, np.nan); d[1:] = x[1:] - x[:-1]
    c = np.nancumsum(np.nan_to_num(d), axis=0)
    m = np.full_like(x, np.nan); m[SHORT:] = (c[SHORT:] - c[:-SHORT]) / SHORT
    d[np.isnan(v)] = np.nan; m[np.isnan(v)] = np.nan
    return d, m


def scores(v, prior):
    """(T,) the largest |z| over channels of d and m, each in the stream's online spread."""
    both = np.stack(stats(v))  # (2, T, F)
    n, ms = 0, np.zeros(both.shape[::2])  # (2, F)
    out = np.zeros(both.shape[1])
    for t in range(both.shape[1]):
        s = np.sqrt((PRIOR * prior**2 + n * ms) / (PRIOR + n))
        a = both[:, t]
        ok = ~np.isnan(a)
        z = np.where(ok, np.abs(np.nan_to_num(a)) / s, 0.0)
        out[t] = z.max()
        if ok.any():
            n = min(n + 1, MEMORY)
            c = np.minimum(np.abs(np.nan_to_num(a)), CLIP * s)
            ms = np.where(ok, ms + (c * c - ms) / n, ms)
    return out


def rows_of(series, z, thr):
    out = []
    for s, zs in zip(series, z):
        o, i = incidents_from_flags(zs >= thr, RESOLVE)
        out += map(Flagged, [s.stream_id] * len(s), s.ts_ms.tolist(), o.tolist(), i.tolist())
    return out


def union(a, b):
    """Rows flagged by either (anomalyd's readings inside incidents, the rule's flags)."""
    out = []
    by = {}
    for r in a + b:
        by.setdefault(r.stream_id, {}).setdefault(r.ts_ms, []).append(r.incident or r.anomaly)
    for sid, d in by.items():
        ts = sorted(d)
        o, i = incidents_from_flags([any(d[t]) for t in ts], RESOLVE)
        out += map(Flagged, [sid] * len(ts), ts, o.tolist(), i.tolist())
    return out


def level(z_hist):
    """The level whose clusters come SHARE per 10,000 readings: the budget's own tail fit."""
    sid = np.concatenate([np.full(len(z), k, np.int64) for k, z in enumerate(z_hist)])
    return rate_level(np.concatenate(z_hist), sid, SHARE / 1e4, RESOLVE, 0.0)


def study(argv, name, changes, scores):
    """The dev fleets' runs of a rule whose statistic is ``scores(v, prior)``, its prior the
    fleet's median of 1.4826 x each stream's median |changes(v)| (nan-aware, over time),
    beside anomalyd's shipped incidents and OR-ed with them; prints the pooled table.
    argv: FLEET_OUT STREAMS SEED[,..] [STYLE..]."""
    out, streams = Path(argv[0]), int(argv[1])
    seeds = [int(s) for s in argv[2].split(",")]
    summary = {}
    for style in argv[3:] or list(STYLES):
        runs = []
        for seed in seeds:
            fl = generate(style, seed, streams, 2000, 1500)
            hist = np.concatenate([s.values for s in fl.history]).astype(np.float64)
            mu, sd = np.nanmean(hist, axis=0), np.nanstd(hist, axis=0)
            unit = lambda s: (s.values.astype(np.float64) - mu) / sd
            per = [np.nanmedian(np.abs(changes(unit(s))), axis=-2) * 1.4826 for s in fl.history]
            prior = np.maximum(np.median(np.stack(per), axis=0), 1e-6)  # the fleet's scale
            zh = [scores(unit(s), prior) for s in fl.history]
            thr = level(zh)
            rule = tuple(rows_of(seg, [scores(unit(s), prior) for s in seg], thr)
                         for seg in (fl.clean, fl.anomalous))
            model = out / style / f"s{seed}" / "model"
            eng = (replay_engine(model, fl.clean), replay_engine(model, fl.anomalous))
            both = (union(eng[0], rule[0]), union(eng[1], rule[1]))
            tol = TOLERANCE_READINGS * round(fl.style.period_s * 1000)
            run = {}
            for det, (c, a) in (("anomalyd", eng), (name, rule), ("both", both)):
                run[det] = {"anomalous": label_scores(a, fl.labels, tol), "clean": clean_rates(c, COLD_READINGS)}
            runs.append(run)
            print(f"{style} seed {seed}: threshold {thr:.2f}", file=sys.stderr, flush=True)
        summary[style] = {det: _pool(runs, det) for det in runs[0]}
        print(_table(summary), flush=True)


if __name__ == "__main__":
    study(sys.argv[1:], "diff rule", lambda v: np.stack(stats(v)), scores)
