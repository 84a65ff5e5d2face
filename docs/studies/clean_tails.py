# docs/quality.md, session 13. Usage: .venv/bin/python docs/studies/clean_tails.py STYLE SEED MODEL_DIR [...]
import sys, numpy as np
sys.path.insert(0, "docs/studies")
from studylib import setup
style, seed, b, fleet, run = setup()
r = run(fleet.history)
e = np.abs(np.where(r.observed, r.errors, 0.0))
top = np.argsort(e.max(1))[::-1][:25]
per = np.median(np.diff(fleet.history[0].ts_ms))
print(style, seed, "readings", len(e), "share |e|max>8:", (e.max(1) > 8).mean().round(4), " by channel:", [(e[:, c] > 8).sum() for c in range(e.shape[1])])
for k in top:
    i, j = r.stream[k], r.index[k]; s = fleet.history[i]; c = int(e[k].argmax())
    d = (s.values[j] - s.values[j-1]) / fleet.unit[i]
    print(f"s{i} j={j} ch{c} |e|={e[k, c]:.1f} gap={(s.ts_ms[j]-s.ts_ms[j-1])/per:.2f} diff_u={np.round(d, 1)} raw_err_u={np.round((s.values[j]-r.expected[k])/fleet.unit[i], 1)}")
