# docs/quality.md, session 28: the shift rule's statistic per stream over a long clean run:
# the largest value in the history and in each 2,000 readings of 20,000 clean ones after it
# (the same streams, a new noise realisation), beside the model's threshold.
# Usage: PYTHONPATH=. .venv/bin/python docs/studies/shift_long_tail.py STYLE SEED MODEL_DIR
import json, sys, numpy as np
from training.fleet.styles import generate
from training.shiftcal import shift_statistic
from detector.core.scoring import Scaler
from detector.core.shift import ShiftConfig
style, seed, mdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
m = json.load(open(f"{mdir}/v000001/manifest.json")); sc = m["scoring"]; sh = sc["shift"]
cfg = ShiftConfig.from_dict(sh)  # with its per-channel scale (format 5)
fl = generate(style, seed, 12, 2000, 20000)
scaler = Scaler(tuple(m["scaler"]["mean"]), tuple(m["scaler"]["std"]))
zh = shift_statistic(fl.history, scaler, cfg, sc["warmup"])
zc = shift_statistic(fl.clean, scaler, cfg, sc["warmup"])
print("threshold", round(sh["threshold"], 2))
for k in range(12):
    h, c = zh[k], zc[k]
    row = [np.nanmax(np.where(np.isfinite(h), h, np.nan))] + [np.nanmax(np.where(np.isfinite(c[a:a+2000]), c[a:a+2000], np.nan)) for a in range(0, 20000, 2000)]
    print(k, " ".join(f"{v:5.2f}" for v in row))
