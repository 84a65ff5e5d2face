# docs/quality.md, session 28: the dev models' shift threshold replaced by what the budget's
# tail fit asks for without the 3.5 floor (or FLOOR), the evaluation segments replayed; the
# pooled table beside the shipped models. Models: fleet_seeds.py's OUT (12 streams).
# Usage: PYTHONPATH=. .venv/bin/python docs/studies/shift_floor_replay.py OUT SEEDS STYLE[,STYLE..]
import json, os, shutil, sys, numpy as np
from pathlib import Path
from training.fleet.evaluate import _pool, _table, TOLERANCE_READINGS, replay_engine
from training.fleet.score import COLD_READINGS, clean_rates, label_scores
from training.fleet.styles import generate
from training.shiftcal import shift_statistic
from training.tail import rate_level
from detector.core.scoring import Scaler
from detector.core.shift import ShiftConfig
FLOOR = float(os.environ.get("FLOOR", 0))
src, seeds, styles = Path(sys.argv[1]), [int(s) for s in sys.argv[2].split(",")], sys.argv[3].split(",")
summary = {}
for style in styles:
    runs = []
    for seed in seeds:
        mdir = src / style / f"s{seed}" / "model"
        man = mdir / "v000001" / "manifest.json"
        m = json.load(open(man)); sc = m["scoring"]; sh = sc["shift"]
        fl = generate(style, seed, 12, 2000, 1500)
        run = {"shipped": None, "lowered": None}
        tol = TOLERANCE_READINGS * round(fl.style.period_s * 1000)
        eng = (replay_engine(mdir, fl.clean), replay_engine(mdir, fl.anomalous))
        run["shipped"] = {"anomalous": label_scores(eng[1], fl.labels, tol), "clean": clean_rates(eng[0], COLD_READINGS)}
        if sh and sh.get("threshold"):
            cfg = ShiftConfig.from_dict(sh)  # with its per-channel scale (format 5)
            zs = shift_statistic(fl.history, Scaler(tuple(m["scaler"]["mean"]), tuple(m["scaler"]["std"])), cfg, sc["warmup"])
            x = np.concatenate(zs); sid = np.concatenate([np.full(len(z), k) for k, z in enumerate(zs)])
            thr = rate_level(x, sid, 0.4 / 2.2 * 0.5 / 1e4, 10, FLOOR)
            dst = Path(f"/tmp/shift_floor_replay/{style}/s{seed}/model")
            if dst.exists(): shutil.rmtree(dst)
            shutil.copytree(mdir, dst)
            m2 = json.load(open(dst / "v000001" / "manifest.json"))
            m2["scoring"]["shift"]["threshold"] = thr
            json.dump(m2, open(dst / "v000001" / "manifest.json", "w"))
            print(style, seed, "shift", round(sh["threshold"], 2), "->", round(thr, 2), file=sys.stderr, flush=True)
            eng = (replay_engine(dst, fl.clean), replay_engine(dst, fl.anomalous))
        run["lowered"] = {"anomalous": label_scores(eng[1], fl.labels, tol), "clean": clean_rates(eng[0], COLD_READINGS)}
        runs.append(run)
    summary[style] = {det: _pool(runs, det) for det in runs[0]}
    print(_table(summary), flush=True)
