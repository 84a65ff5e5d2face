# One fleet style x seed with the trainer's learning rate changed (docs/quality.md, session 5).
# Usage: .venv/bin/python docs/studies/fit_option.py STYLE SEED OUT LR
import dataclasses, json, sys
from pathlib import Path
import training.cli as tc
from training.fleet.evaluate import evaluate_one
style, seed, out, lr = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
_config = tc._config
tc._config = lambda args: dataclasses.replace(_config(args), lr=lr)
r = evaluate_one(style, seed, 12, 2000, 1500, out)
(out / "run.json").write_text(json.dumps(r, indent=1))
x = r["anomalyd"]["anomalous"]; c = r["anomalyd"]["clean"]
print(lr, "recall %.2f prec %.2f" % (x["recall"], x["precision"]), {k: round(v, 2) for k, v in x["recall_by_kind"].items()}, "clean F/10k cold %.1f warm %.1f" % (c["cold"]["false_per_10k"], c["warm"]["false_per_10k"]))
