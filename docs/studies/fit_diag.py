# docs/quality.md, session 6: per-epoch gradient norms and chunk losses of the default fit.
# Usage: .venv/bin/python docs/studies/fit_diag.py STYLE SEED ["{'periods_s': ()}"]
import sys, torch, numpy as np
from dataclasses import replace
import training.fit as F
from training.pipeline import DEFAULT_FIT
from training.data import holdout
from training.fleet.styles import generate
style, seed = sys.argv[1], int(sys.argv[2])
extra = eval(sys.argv[3]) if len(sys.argv) > 3 else {}
fleet = generate(style, seed, 12, 2000, 1500)
held = set(holdout(fleet.history, 0.25))
series = [s for i, s in enumerate(fleet.history) if i not in held]
norms = []
orig = torch.nn.utils.clip_grad_norm_
def rec(params, max_norm, *a, **k):
    n = orig(params, max_norm, *a, **k); norms.append(float(n)); return n
torch.nn.utils.clip_grad_norm_ = rec
losses = []
orig_se = F._masked_se
def se(*a):
    r = orig_se(*a); losses.append(float(r[0] / r[1].clamp(min=1))); return r
F._masked_se = se
cfg = replace(DEFAULT_FIT, threads=1, epochs=8, patience=8, **extra)
res = F.fit(series, fleet.features, cfg)
n = len(norms) // len(res.history)
for e in range(len(res.history)):
    g = np.array(norms[e*n:(e+1)*n]); l = np.array(losses[e*n:(e+1)*n])
    print(f"epoch {e+1}: val {res.history[e]['val_loss']:.5f} grad norm median {np.median(g):.3f} max {g.max():.2f} clipped {np.mean(g>cfg.grad_clip):.0%}; chunk loss first5 {l[:5].mean():.5f} last5 {l[-5:].mean():.5f} all {l.mean():.5f}")
