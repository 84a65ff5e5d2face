# docs/quality.md, session 12. Usage: .venv/bin/python docs/studies/spike_pairs.py STYLE SEED MODEL_DIR
# Offline: a spike is an error and its opposite-signed return on the next reading. How rare is
# such a pair on clean data, and how many spike labels would it catch?
import sys, numpy as np
sys.path.insert(0, "docs/studies")
from studylib import setup
from detector.core.incidents import rule_names
from training.calibrate import run_engine
style, seed, b, fleet, run = setup()
def pairs(r):
    e = np.where(r.observed, r.errors, 0.0)
    same = np.r_[False, r.stream[1:] == r.stream[:-1]]
    prev = np.vstack([np.zeros((1, e.shape[1])), e[:-1]])
    opp = (np.sign(prev) * np.sign(e) < 0) & same[:, None]
    return np.where(opp, np.minimum(np.abs(prev), np.abs(e)), 0).max(axis=1)
hist, clean, anom = (run(s) for s in (fleet.history, fleet.clean, fleet.anomalous))
ph, pc, pa = pairs(hist), pairs(clean), pairs(anom)
shipped = run_engine(b.module, b.scaler, b.features, fleet.anomalous, b.scoring, collect_from=[0]*len(fleet.anomalous))
ids = np.array([fleet.anomalous[i].stream_id for i in anom.stream])
ts = np.array([fleet.anomalous[i].ts_ms[j] for i, j in zip(anom.stream, anom.index)])
sids = np.array([fleet.anomalous[i].stream_id for i in shipped.stream])
sts = np.array([fleet.anomalous[i].ts_ms[j] for i, j in zip(shipped.stream, shipped.index)])
period = np.median(np.diff(fleet.anomalous[0].ts_ms))
print(style, seed, "clean readings", len(pc), "history", len(ph))
for q in (3.0, 3.5, 4.0, 4.5, 5.0):
    caught = {}; missed_by_shipped = 0; new = 0
    for L in fleet.labels:
        m = (ids == L.stream_id) & (ts >= L.start_ms) & (ts <= L.end_ms + 5 * period)
        hit = bool((pa[m] >= q).any())
        ms = (sids == L.stream_id) & (sts >= L.start_ms) & (sts <= L.end_ms + 5 * period)
        shipped_hit = bool(shipped.opened[ms].any())
        caught.setdefault(L.kind, [0, 0, 0]); caught[L.kind][0] += hit; caught[L.kind][1] += 1; caught[L.kind][2] += hit and not shipped_hit
    print(f"q={q}: clean pairs >= q {int((pc >= q).sum())} (history {int((ph >= q).sum())})",
          {k: f"{v[0]}/{v[1]} new {v[2]}" for k, v in caught.items()})
