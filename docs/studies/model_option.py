# One fleet style x seed with a ModelConfig option changed (docs/quality.md, Session 5).
# Usage: .venv/bin/python docs/studies/model_option.py STYLE SEED OUT '{"residual": false}'
"""Dev experiment: one style x seed of the fleet evaluation with a model option changed."""
import functools, json, sys
from pathlib import Path
import training.fit as fit
from detector.core.model import ModelConfig
from training.fleet.evaluate import evaluate_one
style, seed, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
opts = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
if opts:
    fit.ModelConfig = functools.partial(ModelConfig, **opts)
r = evaluate_one(style, seed, 12, 2000, 1500, out)
out.mkdir(parents=True, exist_ok=True)
(out / "run.json").write_text(json.dumps(r, indent=1))
a = r["anomalyd"]; b = r["baseline"]
for d in ("anomalyd", "baseline"):
    x = r[d]["anomalous"]; c = r[d].get("clean", {})
    print(d, "recall %.2f prec %.2f" % (x["recall"], x["precision"]), {k: round(v, 2) for k, v in x["recall_by_kind"].items()}, {k: c[k] for k in c if "per_10k" in k or "false" in k})
