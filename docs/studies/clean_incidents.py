# docs/quality.md, session 36: where a probe's false incidents on clean readings lie. Replays
# a trained probe model (benchmark_channels.py's work dir) over the same fleet's clean
# segments from a cold state and prints every incident that opens: the stream, the
# reading's index since the stream's cold start, and the rules that flagged it.
# Usage: [EXTRA=sizes SPREAD=S [IDLE=N]] PYTHONPATH=. .venv/bin/python docs/studies/clean_incidents.py MODEL STYLE SEED [STREAMS]
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from detector.artifacts import load_current
from detector.core.engine import Engine
from detector.core.incidents import RULE_NAMES
from detector.replay import score_stream
from training.fleet.styles import generate, to_readings

if __name__ == "__main__":
    model, style, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    streams = int(sys.argv[4]) if len(sys.argv) > 4 else 12
    fl = generate(style, seed, streams, 2000, 1500)
    if os.environ.get("EXTRA") == "sizes":  # as benchmark_channels.py scales them
        from docs.studies.benchmark_channels import IDLE, idle, sized  # noqa: E402

        spread = float(os.environ.get("SPREAD", "10"))
        rng = np.random.default_rng(seed)
        ids = sorted({s.stream_id for s in fl.history})
        k = dict(zip(ids, np.exp(rng.uniform(-np.log(spread), np.log(spread), len(ids)))))
        fl = replace(fl, clean=sized(fl.clean, k))
        if IDLE:  # as benchmark_channels.py idles them (its rng: sizes, then clean's idle)
            unit = fl.unit * np.array([k[s.stream_id] for s in fl.history])[:, None]
            fl = replace(fl, clean=idle(fl.clean, unit, rng))
    else:
        k = {}
    engine = Engine(load_current(model), max_streams=len(fl.clean) + 1, device="auto")
    seen: dict[str, int] = {}
    for batch, res in score_stream(engine, to_readings(fl.clean)):
        for r, opened, mask in zip(batch, res.anomalous.tolist(), res.rules.tolist()):
            i = seen[r.stream_id] = seen.get(r.stream_id, -1) + 1
            if opened:
                rules = [n for b, n in enumerate(RULE_NAMES) if int(mask) >> b & 1]
                size = f" size x{k[r.stream_id]:.2f}" if k else ""
                print(f"{r.stream_id} reading {i}{size}: {'+'.join(rules)}")
