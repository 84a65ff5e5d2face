# docs/quality.md, session 7: how long a flagged reading's stand-in is fed (protect_max),
# on a trained fleet model, thresholds unchanged. Usage:
# .venv/bin/python docs/studies/protect_ab.py STYLE SEED MODEL_DIR [PROTECT_MAX ...]
import dataclasses, sys, tempfile
from pathlib import Path
from detector.artifacts import load_current, publish
from training.fleet import evaluate as ev
from training.fleet.styles import generate
style, seed, mdir = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
values = [int(v) for v in sys.argv[4:]] or [30, 3, 0]
b = load_current(mdir)
fleet = generate(style, seed, 12, 2000, 1500)
for pm in values:
    sc = dataclasses.replace(b.scoring, protect_max=pm, protect_state=pm > 0)
    with tempfile.TemporaryDirectory() as d:
        publish(Path(d), dataclasses.replace(b, scoring=sc))
        rows = (ev.replay_engine(Path(d), fleet.clean), ev.replay_engine(Path(d), fleet.anomalous))
    r = ev._score_both(fleet, {"x": rows})["x"]
    a, c = r["anomalous"], r["clean"]
    print(f"{style:10s} s{seed} protect_max {pm:3d} rec {a['recall']:.2f} prec {a['precision']:.2f} "
          f"false c {c['cold']['false_incidents']} w {c['warm']['false_incidents']} "
          f"in% {100*c['all']['share_in_incidents']:.2f} "
          + " ".join(f"{k[:5]} {v:.2f}" for k, v in a['recall_by_kind'].items()), flush=True)
