# docs/quality.md, session 6. Usage: .venv/bin/python docs/studies/budget_all_streams.py OUT SEED STYLE...
# (trains with the defaults into OUT/STYLE/sSEED/model unless a model is there)
"""Budget calibration on held-out streams only (shipped) vs every stream's history, cold.
Same trained model for both; dev seeds only. Usage: cal_study.py OUT SEED STYLE..."""
import sys, json, time
from dataclasses import replace
from pathlib import Path
import numpy as np
from detector.artifacts import load_current
from detector.core.engine import Engine
from detector.replay import score_stream
from training.budget import fit_budget
from training.pipeline import DEFAULT_BUDGET
from training.fleet import evaluate as ev
from training.fleet.styles import generate, to_readings
from training.fleet.score import Flagged

out, seed, styles = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]

def replay(bundle, series):
    engine = Engine(bundle, max_streams=len(series) + 1, device="cpu")
    rows = []
    for batch, res in score_stream(engine, to_readings(series)):
        rows += list(map(Flagged, [r.stream_id for r in batch], [r.ts_ms for r in batch],
                         res.anomalous.tolist(), res.incidents.inside.tolist()))
    return rows

for style in styles:
    t0 = time.time()
    fleet = generate(style, seed, 12, 2000, 1500)
    wd = out / style / f"s{seed}"
    mdir = wd / "model"
    if not (mdir / "CURRENT").exists():
        ev.train_defaults(fleet.history, fleet.features, wd)
    b = load_current(mdir)
    variants = {"held": b}
    scoring, rep = fit_budget(b.module, b.scaler, b.features, fleet.history, b.scoring, DEFAULT_BUDGET)
    variants["all"] = replace(b, scoring=scoring)
    res = {}
    for name, bun in variants.items():
        rows = (replay(bun, fleet.clean), replay(bun, fleet.anomalous))
        res[name] = ev._score_both(fleet, {name: rows})[name]
        s = bun.scoring
        res[name]["thresholds"] = {"error": s.threshold, "peak": s.peak.threshold if s.peak else None,
                                   "sustained": s.sustained.threshold if s.sustained else None, "warmup": s.warmup}
    (wd / "cal.json").write_text(json.dumps(res, indent=1))
    for name, r in res.items():
        a, c = r["anomalous"], r["clean"]
        print(f"{style:10s} s{seed} {name:5s} rec {a['recall']:.2f} prec {a['precision']:.2f} "
              f"F/10k c {1e4*c['cold']['false_incidents']/c['cold']['readings']:.1f} w {1e4*c['warm']['false_incidents']/c['warm']['readings']:.1f} "
              f"thr {json.dumps({k: round(v,2) if v else v for k,v in r['thresholds'].items()})} "
              + " ".join(f"{k[:5]} {v:.2f}" for k, v in a['recall_by_kind'].items()), flush=True)
    print(f"  ({time.time()-t0:.0f}s)", flush=True)
