# docs/quality.md, session 8: which rules flagged inside each caught label (shipped scoring,
# every rule on), and which labels only one rule saw; false incidents on clean by rule.
# Usage: .venv/bin/python docs/studies/caught_by_rule.py STYLE SEED MODEL_DIR
import sys
from collections import Counter
from pathlib import Path
import numpy as np
from detector.artifacts import load_current
from detector.core.incidents import rule_names
from training.calibrate import run_engine
from training.fleet.styles import generate
style, seed, mdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
b = load_current(Path(mdir))
fleet = generate(style, seed, streams=12)
run = lambda ser: run_engine(b.module, b.scaler, b.features, ser, b.scoring, collect_from=[0] * len(ser))
a, c = run(fleet.anomalous), run(fleet.clean)
ts = np.array([fleet.anomalous[i].ts_ms[j] for i, j in zip(a.stream, a.index)])
ids = np.array([fleet.anomalous[i].stream_id for i in a.stream])
period = np.median(np.diff(fleet.anomalous[0].ts_ms))
only, seen, caught = Counter(), Counter(), 0
for L in fleet.labels:
    m = (ids == L.stream_id) & (ts >= L.start_ms) & (ts <= L.end_ms + 5 * period)
    rules = set()
    for k in np.flatnonzero(m & (a.rules > 0)):
        rules |= set(rule_names(int(a.rules[k])))
    if rules:
        caught += 1; seen.update(rules)
        if len(rules) == 1: only[(next(iter(rules)), L.kind)] += 1
fc = Counter()
for k in np.flatnonzero(c.opened):
    fc.update(rule_names(int(c.rules[k])))
print(style, seed, "labels flagged", caught, "of", len(fleet.labels), "rules seen", dict(seen),
      "only one rule", dict(only), "| clean opened", int(c.opened.sum()), "by rule", dict(fc))
