# docs/quality.md, session 11: the integration test's pump fleet, clean, from a cold state at
# several times of day: false incidents by the reading's position after the cold start and by
# the rule that opened them. MODEL: a model dir trained as in pipeline_fleet.py.
# WARM=300: the streams start that many readings earlier, and only the same readings as the
# cold run's are counted (positions as the cold run's): warm against cold, same readings.
# Usage: [WARM=300] .venv/bin/python docs/studies/pump_cold.py MODEL [TICKS [START ...]]
"""Where on a clean pump fleet's cold start the false incidents open."""
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from detector.artifacts import load_current
from detector.core.engine import Engine
from detector.core.incidents import RULE_NAMES
from detector.sandbox.simulation import Fleet, FleetSpec

model = Path(sys.argv[1])
ticks = int(sys.argv[2]) if len(sys.argv) > 2 else 600
starts = [int(a) for a in sys.argv[3:]] or [3000, 3360, 3720, 4080]
SPEC = FleetSpec(streams=200, seed=5).clean()
EDGES = (0, 50, 100, 200, 400, 10**9)
WARM = int(os.environ.get("WARM", "0"))
bundle = load_current(model)
total: Counter[tuple[int, str]] = Counter()
for start in starts:
    engine = Engine(bundle, max_streams=SPEC.streams + 1, max_gap_ms=10**12)
    fleet = Fleet(SPEC, start_tick=start - WARM)
    pos = -WARM
    for block in fleet.blocks(ticks + WARM, 100):
        if pos >= ticks:
            break
        ids, ts, vals = block.flat()
        res = engine.process(ids, ts, vals.astype(np.float32), now_ms=int(ts.max()))
        for i in np.flatnonzero(res.anomalous):
            m = int(res.rules[i])
            rule = next((n for j, n in enumerate(RULE_NAMES) if m >> j & 1), "error")
            p = pos + (int(ts[i]) - SPEC.start_ms) // SPEC.period_ms - block.first_tick
            if p < 0:
                continue
            bucket = next(k for k in range(len(EDGES) - 1) if EDGES[k] <= p < EDGES[k + 1])
            total[(bucket, rule)] += 1
        pos += block.n_readings // SPEC.streams
    print(f"start tick {start} (hour {start % 1440 / 60:.0f}): "
          f"{sum(v for k, v in total.items())} false incidents so far", flush=True)
n = len(starts) * SPEC.streams
for k in range(len(EDGES) - 1):
    lo, hi = EDGES[k], min(EDGES[k + 1], ticks)
    if lo >= ticks:
        break
    got = {r: v for (b, r), v in total.items() if b == k}
    per10k = sum(got.values()) / (n * (hi - lo)) * 1e4
    print(f"readings {lo}-{hi}: {sum(got.values())} false incidents ({per10k:.1f} per 10k) {got}")
