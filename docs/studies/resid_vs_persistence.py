# docs/quality.md, session 13. Usage: .venv/bin/python docs/studies/resid_vs_persistence.py STYLE SEED MODEL_DIR [...]
import sys, numpy as np
sys.path.insert(0, "docs/studies")
from studylib import setup
style, seed, b, fleet, run = setup()
r = run(fleet.clean)
F = len(b.features)
ratio = np.zeros((len(fleet.clean), F))
for i, s in enumerate(fleet.clean):
    m = r.stream == i; idx = r.index[m]
    x = s.values[idx]; xh = r.expected[m]
    prev = s.values[idx - 1]
    ratio[i] = np.nanstd(x - xh, axis=0) / np.nanstd(x - prev, axis=0)
np.set_printoptions(precision=2, linewidth=150)
print(style, seed, "model resid sd / persistence resid sd, per stream (rows) and channel (cols)")
print(ratio)
