# The no-nowcast variant of docs/studies/fit_option.py (docs/quality.md, session 5).
import dataclasses, json, sys
from pathlib import Path
import training.cli as tc
from training.fleet.evaluate import evaluate_one
style, seed, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
_config = tc._config
tc._config = lambda args: dataclasses.replace(_config(args), nowcast=False)
r = evaluate_one(style, seed, 12, 2000, 1500, out)
(out / "run.json").write_text(json.dumps(r, indent=1))
x = r["anomalyd"]["anomalous"]; c = r["anomalyd"]["clean"]
print("no-nowcast recall %.2f prec %.2f" % (x["recall"], x["precision"]), {k: round(v, 2) for k, v in x["recall_by_kind"].items()}, "clean F/10k cold %.1f warm %.1f" % (c["cold"]["false_per_10k"], c["warm"]["false_per_10k"]))
