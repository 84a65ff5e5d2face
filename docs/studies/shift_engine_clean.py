# docs/quality.md, session 10: a model's clean false incidents by the rule that opened them,
# over a long clean replay through the live engine (score_stream), cold.
# Usage: .venv/bin/python docs/studies/shift_engine_clean.py MODEL_DIR STYLE SEED [STREAMS EVAL]
# The fleet is regenerated with the model's seed and stream parameters but EVAL readings
# after the history (the same streams, a new noise realisation): dev seeds only.
"""Clean false incidents by rule through the engine, with what the shift state held."""
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from detector.artifacts import load_current
from detector.core.engine import Engine
from detector.core.incidents import RULE_NAMES
from detector.replay import score_stream
from training.fleet.styles import generate, to_readings

model, style, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
streams, ev = (int(v) for v in (sys.argv[4:6] or (12, 20000)))
fl = generate(style, seed, streams, 2000, ev)
bundle = load_current(model)
print("shift", bundle.scoring.shift and bundle.scoring.shift.threshold, "warmup",
      bundle.scoring.warmup)
engine = Engine(bundle, max_streams=streams + 1, device="cpu")
pos: Counter[str] = Counter()
by_rule: Counter[str] = Counter()
rows = []
length: dict[int, int] = {}  # row -> readings inside its incident (session 46)
last: dict[str, int] = {}  # stream -> its latest incident's row
for batch, res in score_stream(engine, to_readings(fl.clean)):
    inside = res.incidents.inside.tolist()
    for r, a, m, i in zip(batch, res.anomalous.tolist(), res.rules.tolist(), inside,
                          strict=True):
        k = pos[r.stream_id]
        pos[r.stream_id] += 1
        if a:
            names = [n for j, n in enumerate(RULE_NAMES) if m >> j & 1]
            by_rule["+".join(names)] += 1
            last[r.stream_id] = len(rows)
            rows.append((r.stream_id, k, names))
        if i and r.stream_id in last:
            length[last[r.stream_id]] = length.get(last[r.stream_id], 0) + 1
n = sum(pos.values())
print(f"{n} clean readings, {len(rows)} incidents ({1e4 * len(rows) / n:.2f} per 10k), "
      f"{sum(length.values())} readings inside ({100 * sum(length.values()) / n:.3f} %):",
      dict(by_rule))
for j, (sid, k, names) in enumerate(rows):
    print(" ", sid, k, names, "readings inside", length.get(j, 0))
