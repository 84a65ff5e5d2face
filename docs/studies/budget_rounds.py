# docs/quality.md, session 7: each budget round's levels and each part's statistics, printed
# while `anomalyd train`'s pipeline calibrates one fleet (dev seed 1, 12 streams, one thread).
# Usage: .venv/bin/python docs/studies/budget_rounds.py STYLE
import sys, numpy as np, tempfile
from pathlib import Path
import training.budget as B
from training.fleet.styles import generate
from training.pipeline import train_and_publish
from training.cli import _config
orig_stats = B._statistics
def stats(run, sc):
    s = orig_stats(run, sc)
    print("part: mean/std", round(sc.error_mean,4), round(sc.error_std,4), "thr", sc.threshold, {k: (np.round(np.quantile(v[np.isfinite(v)], [0.5, 0.99, 0.999]),2).tolist(), round(float(v[np.isfinite(v)].max()),2)) for k, v in s.items()}, flush=True)
    return s
B._statistics = stats
orig_rl = B.rate_level
def rl(x, stream, rate, gap, floor):
    v = orig_rl(x, stream, rate, gap, floor); print("  level", round(v,3), "n", x.size, flush=True); return v
B.rate_level = rl
style = sys.argv[1]
fleet = generate(style, 1, 12, 2000, 1500)
from dataclasses import replace
from training.pipeline import DEFAULT_FIT
with tempfile.TemporaryDirectory() as d:
    train_and_publish(fleet.history, fleet.features, Path(d), replace(DEFAULT_FIT, threads=1))
