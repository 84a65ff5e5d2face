# docs/quality.md, session 17: per stream and channel, the RMS of the whitened errors on the clean segment.
# Usage: PYTHONPATH=. .venv/bin/python docs/studies/rms_by_stream.py STYLE SEED MODEL_DIR
import sys
from pathlib import Path
import numpy as np
from detector.artifacts import load_current
from training.calibrate import run_engine
from training.fleet.styles import generate
style, seed, mdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
b = load_current(Path(mdir))
fleet = generate(style, seed, streams=12)
r = run_engine(b.module, b.scaler, b.features, fleet.clean, b.scoring)
e = np.where(r.observed, r.errors, 0.0)
np.set_printoptions(precision=2, suppress=True, linewidth=150)
M = np.array([np.sqrt((e[r.stream == s] ** 2).mean(axis=0)) for s in range(12)])
print(M)
print("cv per channel", (M.std(axis=0) / M.mean(axis=0)).round(2))
