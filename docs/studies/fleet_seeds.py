# docs/quality.md, session 8: the fleet evaluation one seed at a time across the styles
# (the CLI runs every seed of a style before the next style), resumable, shipped defaults.
# Usage: .venv/bin/python docs/studies/fleet_seeds.py OUT STREAMS SEED[,SEED..] [STYLE..]
# A run whose OUT/STYLE/sSEED/run.json exists is read, not re-run; the pooled table is
# printed after each run, in the format of `anomalyd evaluate fleet`.
import json, sys
from pathlib import Path
from training.fleet.evaluate import DETECTORS, _pool, _table, evaluate_one
from training.fleet.styles import STYLES


def run_or_read(out, style, seed, streams, history=2000):
    """One style and seed: its OUT/STYLE/sSEED/run.json if there, else evaluated and saved."""
    done = out / style / f"s{seed}" / "run.json"
    if done.exists():
        return json.loads(done.read_text())
    print(f"fleet: {style} seed {seed}", file=sys.stderr, flush=True)
    run = evaluate_one(style, seed, streams, history, 1500, done.parent, "auto")
    done.write_text(json.dumps(run, indent=1))
    return run


def pooled_table(out, streams, seeds, styles):
    """Every style and seed run (or read), pooled per style and over all, as a table."""
    runs = [run_or_read(out, style, seed, streams) for seed in seeds for style in styles]
    summary = {s: {d: _pool([r for r in runs if r["style"] == s], d) for d in DETECTORS}
               for s in styles}
    summary["all"] = {d: _pool(runs, d) for d in DETECTORS}
    return _table(summary)


if __name__ == "__main__":  # --jobs auto spawns workers, which import this file
    out, streams = Path(sys.argv[1]), int(sys.argv[2])
    seeds = [int(s) for s in sys.argv[3].split(",")]
    styles = sys.argv[4:] or list(STYLES)
    runs = []
    for seed in seeds:
        for style in styles:
            runs.append(run_or_read(out, style, seed, streams))
            names = sorted({r["style"] for r in runs}, key=styles.index)
            summary = {s: {d: _pool([r for r in runs if r["style"] == s], d) for d in DETECTORS}
                       for s in names}
            summary["all"] = {d: _pool(runs, d) for d in DETECTORS}
            print(f"{len(runs)} runs: {[(r['style'], r['seed']) for r in runs]}", flush=True)
            print(_table(summary), flush=True)
