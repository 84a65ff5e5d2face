# docs/quality.md, session 45: the level rule alone, calibrated as the trainer does
# (training.levelcal.calibrate_level on the fleet's history at the rule's share of the default
# budget, 0.5 x 0.4 / 2.6 per 10,000), per variant: base (OWN_PRIOR 100), priorN (OWN_PRIOR N),
# no128 (span 128 left out, threshold re-fitted): labels its statistic reaches within
# [start, end + 5 readings], clean exceedance runs starting before / after reading 1,000.
# Offline walk (no hold inside anomalies). Dev seeds only.
# Usage: PYTHONPATH=. .venv/bin/python docs/studies/level_variants.py SEED VARIANT[,..] STYLE..
import sys, numpy as np
from dataclasses import replace
import detector.core.level as L
from detector.core.scoring import Scaler, ScoringConfig
from detector.core.level import LevelConfig
from training.fleet.styles import generate
from training.levelcal import calibrate_level, _walk
RATE = 0.5e-4 * 0.4 / 2.6
seed = int(sys.argv[1]); variants = sys.argv[2].split(","); styles = sys.argv[3:]
for style in styles:
    fl = generate(style, seed, 12, 2000, 1500)
    v = np.concatenate([h.values for h in fl.history]); mu = np.nanmean(v, 0); sd = np.nanstd(v, 0)
    scaler = Scaler(tuple(map(float, mu)), tuple(map(float, sd)))
    f = len(mu)
    for var in variants:
        L.OWN_PRIOR = float(var[5:]) if var.startswith("prior") else 100.0
        keep = slice(0, 3 * f) if var == "no128" else slice(0, 4 * f)
        cfg = calibrate_level(fl.history, scaler, ScoringConfig(warmup=10, level=LevelConfig()), RATE, 3.5)
        sc = np.array(cfg.scale)
        if var == "no128":  # re-fit the threshold on the kept columns, as calibration would
            from training.tail import tail_threshold
            _, _, st = _walk(fl.history, scaler, cfg, 10)
            z = np.concatenate([(s / sc)[210:, keep].max(1) for s in st])
            cfg = replace(cfg, threshold=max(2.0, tail_threshold(z.astype(np.float32), RATE)))
        caught, cold, warm = 0, 0, 0
        for part in ("anomalous", "clean"):
            _, _, st = _walk(getattr(fl, part), scaler, cfg, 10)
            for s, z in zip(getattr(fl, part), st):
                m = (z / sc)[:, keep].max(1); m[:210] = 0
                over = m >= cfg.threshold
                if part == "clean":
                    starts = np.flatnonzero(over & ~np.r_[False, over[:-1]])
                    cold += int((starts < 1000).sum()); warm += int((starts >= 1000).sum())
                else:
                    period = int(np.median(np.diff(s.ts_ms)))
                    for lab in fl.labels:
                        if lab.stream_id == s.stream_id:
                            w = (s.ts_ms >= lab.start_ms) & (s.ts_ms <= lab.end_ms + 5 * period)
                            caught += bool(over[w].any())
        print(f"{style} {seed} {var:9s} thr {cfg.threshold:.2f} caught {caught} clean runs cold {cold} warm {warm}", flush=True)
