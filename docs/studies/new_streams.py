# docs/quality.md, session 43: new streams in the calibration hold-out. A style's fleet
# whose first calibration fold (the streams the shipped model is calibrated on, chosen by
# a hash of their ids) holds only new streams: their history cut to its last LEN readings,
# the rest of the fleet and every evaluation segment as generated. VARIANT "now" trains
# with the shipped defaults; "before" as before session 43 (short streams could be held out).
# Usage: PYTHONPATH=.:docs/studies .venv/bin/python docs/studies/new_streams.py OUT STYLE SEED LEN VARIANT
import json
import sys
from dataclasses import replace
from pathlib import Path

import training.data
import training.fleet.evaluate as fe
from training.data import StreamSeries, folds
from training.fleet.styles import generate


def cut(length: int):
    def gen(*args, **kw):
        fleet = generate(*args, **kw)
        first = set(folds(fleet.history, 0.25)[0])
        hist = [
            StreamSeries(s.stream_id, s.ts_ms[-length:], s.values[-length:]) if i in first else s
            for i, s in enumerate(fleet.history)
        ]
        print(f"cut to {length}: {[fleet.history[i].stream_id for i in sorted(first)]}", file=sys.stderr)
        return replace(fleet, history=hist)

    return gen


if __name__ == "__main__":  # --jobs auto spawns workers, which import this file
    out, style, seed, length, variant = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    fe.generate = cut(length)
    if variant == "before":
        training.data.MIN_HELD_READINGS = 0
    run = fe.evaluate_one(style, seed, 12, 2000, 1500, out / f"{style}_{seed}_{length}_{variant}", "auto")
    (out / f"{style}_{seed}_{length}_{variant}.json").write_text(json.dumps(run, indent=1))
    summary = {f"{style} {variant}": {d: fe._pool([run], d) for d in fe.DETECTORS}}
    print(fe._table(summary), flush=True)
