# docs/quality.md, session 8: the fleet evaluation one seed at a time across the styles
# (the CLI runs every seed of a style before the next style), resumable, shipped defaults.
# Usage: .venv/bin/python docs/studies/fleet_seeds.py OUT STREAMS SEED[,SEED..] [STYLE..]
# A run whose OUT/STYLE/sSEED/run.json exists is read, not re-run; the pooled table is
# printed after each run, in the format of `anomalyd evaluate fleet`.
import json, sys
from pathlib import Path
from training.fleet.evaluate import DETECTORS, _pool, _table, evaluate_one
from training.fleet.styles import STYLES
if __name__ == "__main__":  # --jobs auto spawns workers, which import this file
    out, streams = Path(sys.argv[1]), int(sys.argv[2])
    seeds = [int(s) for s in sys.argv[3].split(",")]
    styles = sys.argv[4:] or list(STYLES)
    runs = []
    for seed in seeds:
        for style in styles:
            wd = out / style / f"s{seed}"
            done = wd / "run.json"
            if done.exists():
                runs.append(json.loads(done.read_text()))
            else:
                print(f"fleet: {style} seed {seed}", file=sys.stderr, flush=True)
                runs.append(evaluate_one(style, seed, streams, 2000, 1500, wd, "auto"))
                done.write_text(json.dumps(runs[-1], indent=1))
            names = sorted({r["style"] for r in runs}, key=styles.index)
            summary = {s: {d: _pool([r for r in runs if r["style"] == s], d) for d in DETECTORS}
                       for s in names}
            summary["all"] = {d: _pool(runs, d) for d in DETECTORS}
            print(f"{len(runs)} runs: {[(r['style'], r['seed']) for r in runs]}", flush=True)
            print(_table(summary), flush=True)
