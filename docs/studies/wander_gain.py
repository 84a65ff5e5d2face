# docs/quality.md, session 8: per 500 readings, the mean error of the wandering channel c30
# of the wander probe, replayed cold with the shipped scoring; C > 0 clamps the level the
# nowcast gain reads to +-C scaler units (C 0: the model as it is).
# Usage: .venv/bin/python docs/studies/wander_gain.py MODEL_DIR OUT/test.csv C
import sys, csv, collections, numpy as np, torch
from pathlib import Path
from detector.artifacts import load_current
from detector.core import model as mdl
from training.calibrate import run_engine
from training.batches import StreamSeries as SS
C = float(sys.argv[3])
if C > 0:
    orig = mdl.ReconstructionLSTM.readout_parts
    def rp(self, top, x_prev, x_now=None):
        out, moved = orig(self, top, x_prev, x_now)
        if self.cross is None: return out, moved
        f = self.config.features
        k = self.cross(top)[..., :f]
        return out - k * (x_prev - x_prev.clamp(-C, C)), moved
    mdl.ReconstructionLSTM.readout_parts = rp
b = load_current(Path(sys.argv[1]))
rows = list(csv.reader(open(sys.argv[2])))[1:]
by = collections.defaultdict(list)
for r in rows: by[r[1]].append(r)
test = [SS(k, np.array([int(r[0]) for r in v], np.int64), np.array([[float(x) if x else np.nan for x in r[2:]] for r in v])) for k, v in by.items()]
r = run_engine(b.module, b.scaler, b.features, test, b.scoring, collect_from=[0]*len(test))
print("C", C, "opened", int(r.opened.sum()))
k = b.features.index("c30")
print(" ".join(f"{np.nanmean(r.errors[a:a+500, k]):.2f}" for a in range(0, len(r.errors), 500)))
