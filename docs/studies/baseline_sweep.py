# docs/quality.md, session 26: the statistical baseline at lower false-alarm rates, to compare
# recall with anomalyd at a like false-alarm rate. Each stream's threshold (its history's
# 1 - 1e-3 quantile, the shipped baseline) times K; nothing of anomalyd is involved.
# Usage: PYTHONPATH=. .venv/bin/python docs/studies/baseline_sweep.py STREAMS SEED[,SEED..] [STYLE..]
import dataclasses, sys
from training.fleet.baseline import Baseline, BaselineConfig
from training.fleet.evaluate import _pool, _score_both, _table
from training.fleet.styles import STYLES, generate

KS = (1.0, 1.25, 1.5, 2.0, 3.0)
streams, seeds = int(sys.argv[1]), [int(s) for s in sys.argv[2].split(",")]
styles = sys.argv[3:] or list(STYLES)
summary = {}
for style in styles:
    runs = []
    for seed in seeds:
        fleet = generate(style, seed, streams, 2000, 1500)  # fleet_seeds.py's sizes
        base = Baseline(BaselineConfig()).fit(fleet.history)
        rows = {}
        for k in KS:
            b = Baseline(base.cfg)
            b.streams = {s: dataclasses.replace(st, threshold=st.threshold * k) for s, st in base.streams.items()}
            rows[f"base x{k:g}"] = (b.replay(fleet.clean), b.replay(fleet.anomalous))
        runs.append(_score_both(fleet, rows))
    summary[style] = {name: _pool(runs, name) for name in runs[0]}
print(_table(summary))
