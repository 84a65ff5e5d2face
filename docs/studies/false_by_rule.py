# docs/quality.md, session 6: which rule opened the false incidents on clean data.
# Usage: .venv/bin/python docs/studies/false_by_rule.py STYLE SEED MODEL_DIR
import sys
from collections import Counter
from pathlib import Path
import numpy as np
from detector.artifacts import load_current
from training.calibrate import run_engine
from training.fleet.styles import generate
from detector.core.incidents import rule_names
style, seed, mdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
b = load_current(Path(mdir))
print({k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != 'scale'}) for k, v in b.scoring.to_dict().items() if k != 'whiten'})
fleet = generate(style, seed, streams=12)
for name, series in (("clean", fleet.clean), ("hist", fleet.history)):
    r = run_engine(b.module, b.scaler, b.features, series, b.scoring, collect_from=[0]*len(series))
    op = r.opened
    c = Counter(); pos = []
    for i in np.flatnonzero(op):
        c.update(rule_names(int(r.rules[i]))); pos.append(int(r.index[i]))
    flagged = Counter()
    for m in r.rules[r.rules > 0]: flagged.update(rule_names(int(m)))
    print(name, len(r.opened), "opened", int(op.sum()), "by rule", dict(c), "positions", sorted(pos)[:30], "flagged readings by rule", dict(flagged))
