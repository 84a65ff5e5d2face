# docs/quality.md, session 17: each incident opened on clean data (and on the history), its stream,
# rule, channel, error, the error before it, and where its value lies in the stream's history.
# Usage: PYTHONPATH=. .venv/bin/python docs/studies/false_opened.py STYLE SEED MODEL_DIR
import sys
from pathlib import Path
import numpy as np
from detector.artifacts import load_current
from training.calibrate import run_engine
from training.fleet.styles import generate
from detector.core.incidents import rule_names
style, seed, mdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
b = load_current(Path(mdir))
fleet = generate(style, seed, streams=12)
for name, ser in (("hist", fleet.history), ("clean", fleet.clean)):
    r = run_engine(b.module, b.scaler, b.features, ser, b.scoring, collect_from=[0]*12)
    e = np.where(r.observed, r.errors, 0.0)
    for i in np.flatnonzero(r.opened):
        s = r.stream[i]; f = int(np.argmax(np.abs(e[i])))
        h = fleet.history[s].values[:, f]; v = ser[s].values[r.index[i], f]
        print(name, ser[s].stream_id, r.index[i], rule_names(int(r.rules[i])), "ch", f, "err", e[i, f].round(2), "prev", r.e_prev[i, f].round(2), "value pct in hist", round(float((h < v).mean()), 3))
