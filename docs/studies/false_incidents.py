# docs/quality.md, session 45: every incident of a trained fleet model's cold replay that
# touches no label (clean segment: every one), by the rule that opened it and all rules in it.
# Usage: PYTHONPATH=. .venv/bin/python docs/studies/false_incidents.py STYLE SEED MODEL_DIR
# (12 streams, history 2000, evaluation 1500: fleet_seeds.py's; dev seeds only)
# false incidents (no label within [start, end + 5 periods]) on both segments, by first rule
import sys, numpy as np
from pathlib import Path
from detector.artifacts import load_current
from detector.core.engine import Engine
from detector.core.incidents import RULE_NAMES
from detector.replay import score_stream
from training.fleet.styles import generate
from training.fleet.evaluate import to_readings
style, seed, mdir = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
fleet = generate(style, seed, 12, 2000, 1500)
b = load_current(mdir)
period = int(np.median(np.diff(fleet.anomalous[0].ts_ms)))
for part in ("clean", "anomalous"):
    eng = Engine(b, max_streams=20)
    ids, rules, inside, ts = [], [], [], []
    for batch, res in score_stream(eng, to_readings(getattr(fleet, part))):
        ids += [r.stream_id for r in batch]; ts += [r.ts_ms for r in batch]
        rules += res.rules.tolist(); inside += res.incidents.inside.tolist()
    ids, rules, inside, ts = map(np.array, (ids, rules, inside, ts))
    for sid in sorted(set(ids)):
        m = ids == sid
        r, ins, t = rules[m], inside[m], ts[m]
        k = 0
        while k < len(ins):
            if not ins[k]:
                k += 1; continue
            j = k
            while j + 1 < len(ins) and ins[j + 1]: j += 1
            labs = [l for l in fleet.labels if l.stream_id == sid and l.start_ms <= t[j] and t[k] <= l.end_ms + 5 * period] if part == "anomalous" else []
            if not labs:
                names = [n for q, n in enumerate(RULE_NAMES) if (np.bitwise_or.reduce(r[k:j+1]) >> q) & 1]
                print(part, sid, k, j - k + 1, "first", [n for q, n in enumerate(RULE_NAMES) if (r[k] >> q) & 1], "all", names)
            k = j + 1
