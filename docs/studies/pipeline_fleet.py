# docs/quality.md, session 10: tests/integration/test_pipeline.py's fleet without the broker:
# the same training (one fit, cross_fit=False) and the same 3,400 ticks of 200 pumps,
# through Engine.process; incidents by the rule that opened them, caught and near. "near"
# by two definitions: session 10's (labels that end inside the window, as the test had) and
# session 11's (any injected anomaly that started inside it, as the test has now).
# --cross-fit: train as `anomalyd train` ships (cross-fitted calibration), not as the test.
# Usage: .venv/bin/python docs/studies/pipeline_fleet.py OUT [--no-shift] [--cross-fit]
"""The pump fleet of the integration test, scored offline, with and without the shift rule."""
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from detector.artifacts import load_current
from detector.core.engine import Engine
from detector.core.incidents import RULE_NAMES
from detector.sandbox.simulation import Fleet, FleetSpec
from training.cli import train_and_publish
from training.data import from_simulation
from training.fit import FitConfig
from training.pipeline import DEFAULT_SCORING

out = Path(sys.argv[1])
shift = "--no-shift" not in sys.argv
FEATURES = ("temp", "vibration", "pressure", "current")
SPEC = FleetSpec(streams=200, seed=5, anomaly_rate=6.0, warmup_ticks=100)
if not (out / "CURRENT").exists():
    history = from_simulation(FleetSpec(streams=24, seed=5).clean(), 2880)
    cfg = FitConfig(hidden=32, layers=2, epochs=12, patience=4, batch_size=8, device="cpu",
                    threads=1, seed=0)
    base = DEFAULT_SCORING if shift else replace(DEFAULT_SCORING, shift=None)
    cross = "--cross-fit" in sys.argv
    train_and_publish(history, FEATURES, out, cfg, "fleet", base=base, cross_fit=cross)
bundle = load_current(out)
engine = Engine(bundle, max_streams=SPEC.streams + 1, max_gap_ms=10**12)
fleet = Fleet(SPEC, start_tick=3000)
opens: list[tuple[str, int, str]] = []
for block in fleet.blocks(400):
    ids, ts, vals = block.flat()
    for k in range(0, len(ids), 4096):
        sl = slice(k, k + 4096)
        res = engine.process(ids[sl], ts[sl], vals[sl].astype(np.float32), now_ms=int(ts[sl].max()))
        for i in np.flatnonzero(res.anomalous):
            m = int(res.rules[i])
            rule = next((n for j, n in enumerate(RULE_NAMES) if m >> j & 1), "error")
            opens.append((ids[k + i], int(ts[k + i]), rule))
labels = [a for a in fleet.anomalies if a.end_ms <= SPEC.start_ms + 3399 * SPEC.period_ms]
p = SPEC.period_ms
found = [a for a in labels if any(s == a.stream_id and a.start_ms <= t <= a.end_ms + 5 * p
                                  for s, t, _ in opens)]
near = [o for o in opens if any(a.stream_id == o[0] and a.start_ms <= o[1] <= a.end_ms + 30 * p
                                for a in labels)]
started = [a for a in fleet.anomalies if a.start_ms <= SPEC.start_ms + 3399 * p]
near_started = [o for o in opens if any(a.stream_id == o[0] and a.start_ms <= o[1] <= a.end_ms
                                        + 30 * p for a in started)]
far = Counter(r for o in opens if o not in near_started for r in [o[2]])
print(f"shift {'on' if shift else 'off'}: {len(found)}/{len(labels)} caught, "
      f"{len(near)}/{len(opens)} near labels ending in the window, "
      f"{len(near_started)}/{len(opens)} near anomalies started in it; "
      f"opened by rule {dict(Counter(o[2] for o in opens))}; "
      f"not near by rule {dict(far)}")
for s, t, r in opens:  # the incidents near no anomaly: the stream's nearest label, if any
    if (s, t, r) in near_started:
        continue
    mine = [a for a in fleet.anomalies if a.stream_id == s]
    best = min(mine, key=lambda a: min(abs(t - a.start_ms), abs(t - a.end_ms)), default=None)
    where = "no label on this stream" if best is None else (
        f"nearest {best.kind} {best.features} from {(t - best.start_ms) // p:+d} to "
        f"{(t - best.end_ms) // p:+d} readings")
    print(f"  far {r:9s} {s} tick {(t - SPEC.start_ms) // p}: {where}")
