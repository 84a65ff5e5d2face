# docs/quality.md, session 32: the largest share of exactly-zero one-step changes of any channel of
# any style, dev/test seeds and the probe seed (context channels need 0.9, held ones 0.8).
# Usage: PYTHONPATH=. .venv/bin/python docs/studies/still_shares.py
from training.fleet.styles import STYLES, generate
from training.context import still_shares
best = 0.0
for style in STYLES:
    for seed in (1, 2, 3, 101, 102, 103, 104, 105, 901):
        fl = generate(style, seed, 12, 2000, 1500)
        sh = still_shares(fl.history, len(fl.features)).max()
        best = max(best, sh)
        if sh > 0.3: print(style, seed, round(float(sh), 3))
print("max", round(best, 3))
