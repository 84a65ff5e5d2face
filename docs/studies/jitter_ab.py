# docs/quality.md, session 7: the calendar inputs' phase jittered during the fit.
# Usage: .venv/bin/python docs/studies/jitter_ab.py STYLE SEED OUT JITTER [nocross]
# (JITTER: FitConfig.calendar_jitter for `anomalyd train`'s defaults in this run;
# nocross: calibration on the held-out quarter alone, no cross-fitted folds)
import dataclasses, functools, json, sys
from pathlib import Path
import training.cli as tc
from training.fleet.evaluate import evaluate_one
style, seed, out, jitter = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
_config = tc._config
tc._config = lambda args: dataclasses.replace(_config(args), calendar_jitter=jitter)
if "nocross" in sys.argv[5:]:
    tc.train_and_publish = functools.partial(tc.train_and_publish, cross_fit=False)
r = evaluate_one(style, seed, 12, 2000, 1500, out)
(out / "run.json").write_text(json.dumps(r, indent=1))
for d in ("anomalyd", "baseline"):
    a, c = r[d]["anomalous"], r[d]["clean"]
    print(f"{style:10s} s{seed} j{jitter} {d:8s} rec {a['recall']:.2f} prec {a['precision']:.2f} "
          f"F/10k c {1e4*c['cold']['false_incidents']/c['cold']['readings']:.1f} "
          f"w {1e4*c['warm']['false_incidents']/c['warm']['readings']:.1f} "
          + " ".join(f"{k[:5]} {v:.2f}" for k, v in a['recall_by_kind'].items()), flush=True)
