# docs/quality.md, session 37: the labels the oracle of oracle_bound.py catches and anomalyd
# misses, one fleet of `anomalyd evaluate fleet --streams 12` and its trained model: kind,
# stream, channel, size, duration, where it starts in the evaluation segment, the oracle's
# peak over its threshold, and the rules that flagged any reading of the label's window.
# Usage: PYTHONPATH=. .venv/bin/python docs/studies/oracle_gap.py STYLE SEED MODEL_DIR
import sys
from pathlib import Path

import numpy as np

from detector.artifacts import load_current
from detector.core.incidents import rule_names
from docs.studies.oracle_bound import LATE, fleet, threshold
from training.calibrate import run_engine
from training.fleet.evaluate import replay_engine
from training.fleet.score import label_scores
from training.fleet.styles import generate

style, seed, mdir = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
data = generate(style, seed, streams=12)
windows, clean, bad, hist = fleet(style, seed, 120, streams=12)
thr = threshold(list(clean), 1.0)
rows = replay_engine(mdir, data.anomalous)
period = round(data.style.period_s * 1000)
b = load_current(mdir)
a = run_engine(
    b.module, b.scaler, b.features, data.anomalous, b.scoring, collect_from=[0] * len(data.clean)
)
ts = np.array([data.anomalous[i].ts_ms[j] for i, j in zip(a.stream, a.index, strict=True)])
ids = np.array([data.anomalous[i].stream_id for i in a.stream])
# generate() sorts its labels by time; the oracle's windows are in dealing order
by_key: dict[tuple[str, str, str], list] = {}
for lab in data.labels:  # (sorted by time)
    by_key.setdefault((lab.stream_id, lab.kind, lab.channel), []).append(lab)
print(f"{style} seed {seed}: oracle threshold {thr:.2f}")
for w in sorted(windows, key=lambda w: w.start):
    sid = f"{style}-{seed}-{w.stream:04d}"
    lab = by_key[(sid, w.kind, data.features[w.channel])].pop(0)
    got = label_scores(rows, [lab], 5 * period)["caught"]
    peak = float(bad[w.stream][hist + w.start : hist + w.end + LATE + 1].max())
    if got or peak < thr:
        continue
    m = (ids == sid) & (ts >= lab.start_ms) & (ts <= lab.end_ms + 5 * period)
    flagged = set()
    for k in np.flatnonzero(m & (a.rules > 0)):
        flagged |= set(rule_names(int(a.rules[k])))
    print(
        f"  missed {w.kind:12s} {sid} {lab.channel} size {lab.size_u:5.2f} u, "
        f"{w.end - w.start + 1:3d} readings from {w.start:4d}; oracle {peak / thr:5.2f}x; "
        f"rules flagged: {sorted(flagged) or '-'}"
    )
