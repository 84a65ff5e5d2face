# docs/quality.md, session 8: per 500 readings, the mean error of the wandering channel c30
# of the wander probe, replayed cold with the shipped scoring; C > 0 clamps the level the
# nowcast gain reads to +-C scaler units (C 0: the model as it is).
# Usage: .venv/bin/python docs/studies/wander_gain.py MODEL_DIR OUT/test.csv C
import sys
from pathlib import Path
import numpy as np
from detector.artifacts import load_current
from training.calibrate import run_engine
from training.files import from_csv
from studylib import clamp_gain
C = float(sys.argv[3])
if C > 0:
    clamp_gain(-C, C)
b = load_current(Path(sys.argv[1]))
test = from_csv([Path(sys.argv[2])], b.features)
r = run_engine(b.module, b.scaler, b.features, test, b.scoring, collect_from=[0] * len(test))
print("C", C, "opened", int(r.opened.sum()))
k = b.features.index("c30")
print(" ".join(f"{np.nanmean(r.errors[a:a+500, k]):.2f}" for a in range(0, len(r.errors), 500)))
