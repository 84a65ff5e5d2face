# docs/quality.md, session 13. Usage: .venv/bin/python docs/studies/label_errors.py STYLE SEED MODEL_DIR [...]
# For each label: the label channel's error (whitened, scaler units / scale?) at onset, end+1, and max
# in window, vs the peak threshold; which rules flagged in [start, end+5].
import sys
from pathlib import Path
import numpy as np
from detector.artifacts import load_current
from detector.core.incidents import rule_names
from training.calibrate import run_engine
from training.fleet.styles import generate
style, seed, mdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
kinds = sys.argv[4].split(",") if len(sys.argv) > 4 else None
b = load_current(Path(mdir))
print("scoring", {k: v for k, v in b.scoring.to_dict().items() if k != "whiten"})
fleet = generate(style, seed, streams=12)
ser = fleet.anomalous
a = run_engine(b.module, b.scaler, b.features, ser, b.scoring, collect_from=[0] * len(ser))
ids = [s.stream_id for s in ser]
feat = list(b.features)
pk = b.scoring.peak.threshold
for L in fleet.labels:
    if kinds and L.kind not in kinds: continue
    i = ids.index(L.stream_id); s = ser[i]
    j0 = int(np.searchsorted(s.ts_ms, L.start_ms)); j1 = int(np.searchsorted(s.ts_ms, L.end_ms, side="right"))
    m = a.stream == i
    idx = a.index[m]; e = a.errors[m]; r = a.rules[m]; sc = a.score[m]
    c = feat.index(L.channel)
    def at(j):
        k = np.flatnonzero(idx == j)
        return (float(e[k[0], c]), float(np.abs(e[k[0]]).max()), float(sc[k[0]])) if k.size else (np.nan,)*3
    w = (idx >= j0) & (idx <= j1 + 5)
    fired = set()
    for k in np.flatnonzero(w & (r > 0)): fired |= set(rule_names(int(r[k])))
    on, end = at(j0), at(j1)
    print(f"{L.kind:12s} {L.size_u:4.1f}u n={j1-j0:3d} ch={c} onset e={on[0]:6.2f} max|e|={on[1]:5.2f} sc={on[2]:5.2f} | end+1 e={end[0]:6.2f} sc={end[2]:5.2f} | win max|e_c|={np.abs(e[w, c]).max():5.2f} peak_thr={pk:.2f} fired={sorted(fired)}")
