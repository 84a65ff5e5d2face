# docs/quality.md, session 32: what the trainer's channel tests see on the simulated styles
# (dev/test seeds and the probe seed): the largest share of exactly-zero one-step changes of
# any channel (context channels need 0.9, held ones 0.8) and the largest median skewness
# (a pseudo-log needs 2). Usage: PYTHONPATH=. .venv/bin/python docs/studies/still_shares.py
import numpy as np
from training.context import still_shares
from training.fleet.styles import STYLES, generate
from training.tame import _skew

still = skew = 0.0
for style in STYLES:
    for seed in (1, 2, 3, 101, 102, 103, 104, 105, 901):
        fl = generate(style, seed, 12, 2000, 1500)
        still = max(still, float(still_shares(fl.history, len(fl.features)).max()))
        for f in range(len(fl.features)):
            cols = [s.values[:, f][~np.isnan(s.values[:, f])].astype(float) for s in fl.history]
            skew = max(skew, float(np.median([_skew(v) for v in cols])))
print(f"largest still share {still:.3f}, largest median skewness {skew:.3f}")
