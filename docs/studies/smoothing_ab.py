# The smoothed-level A/B of docs/quality.md (session 5): one style x seed, smoothing on or off.
# Usage: .venv/bin/python docs/studies/smoothing_ab.py STYLE SEED OUT on|off
import json, sys
from pathlib import Path
import training.fit as fit
from training.fleet.evaluate import evaluate_one
style, seed, out, mode = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
if mode == "off":
    fit.choose_smoothing = lambda *a, **k: ()
else:  # the option (off in the shipped defaults since this study) forced on
    import dataclasses
    import training.cli as tc
    _config = tc._config
    tc._config = lambda args: dataclasses.replace(_config(args), smooth=True)
r = evaluate_one(style, seed, 12, 2000, 1500, out)
(out / "run.json").write_text(json.dumps(r, indent=1))
import training.fleet.evaluate as ev
for d in ("anomalyd", "baseline"):
    x = r[d]["anomalous"]; c = r[d].get("clean", {})
    print(d, "recall %.2f prec %.2f" % (x["recall"], x["precision"]), {k: round(v, 2) for k, v in x["recall_by_kind"].items()}, {k: (round(v, 2) if isinstance(v, float) else v) for k, v in c.items() if not isinstance(v, (dict, list))})
