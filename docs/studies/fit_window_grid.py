# docs/quality.md, session 30: the fit's best validation loss per style and dev seed under
# several BPTT windows, learning rates and epoch limits (fits only, no labels looked at).
# Usage: PYTHONPATH=. .venv/bin/python docs/studies/fit_window_grid.py 2,3 [CONFIG,..]
import sys, time
from dataclasses import replace
from training.fleet.styles import generate, STYLES
from training.fit import FitConfig, fit
CONFIGS = {
    "w64": dict(window=64),
    "w256": dict(window=256),
    "w256e60": dict(window=256, epochs=60),
    "w64lr1": dict(window=64, lr=1e-3),
    "w128lr1": dict(window=128, lr=1e-3),
    "w256lr1e60": dict(window=256, lr=1e-3, epochs=60),
}
seeds = [int(s) for s in sys.argv[1].split(",")]
names = sys.argv[2].split(",") if len(sys.argv) > 2 else list(CONFIGS)
for style in STYLES:
    for seed in seeds:
        fleet = generate(style, seed, 12, 2000, 1500)
        row = []
        for n in names:
            cfg = replace(FitConfig(), threads=1, device="cpu", **CONFIGS[n])
            t = time.time()
            res = fit(fleet.history, fleet.features, cfg)
            best = res.history[res.best_epoch - 1]
            row.append(f"{n} {best['val_loss']:.5f} ({res.best_epoch}/{len(res.history)}, {time.time()-t:.0f}s)")
        print(f"{style:9s} s{seed}: " + " | ".join(row), flush=True)
