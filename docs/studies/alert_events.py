# docs/benchmarks.md, session 24: the cost of turning a scored reading into its alert
# document (detector.core.events.batch_events, then orjson.dumps), as the worker does for
# every reading in an alert storm (incidents off, threshold -1e9); then a cProfile table.
# Usage: .venv/bin/python docs/studies/alert_events.py [profile]
import cProfile, json, pstats, sys, time
import numpy as np, orjson, torch
sys.path.insert(0, ".")
from detector.core.bundle import ModelBundle
from detector.core.engine import Engine
from detector.core.events import batch_events
from detector.core.model import ModelConfig, ReconstructionLSTM
from detector.core.schema import FeatureSpec, decode_batch
from detector.core.scoring import Scaler, ScoringConfig
torch.set_num_threads(1); torch.manual_seed(0)
F = ("temp", "vibration", "pressure", "current")
m = ReconstructionLSTM(ModelConfig(4, hidden=64, layers=2)).eval()
b = ModelBundle("bench", 1, F, m, Scaler((50.0, 0.1, 3.0, 20.0), (10.0, 0.05, 0.5, 5.0)),
                ScoringConfig(threshold=-1e9, warmup=0, incidents=None))
class Rec:
    def __init__(s, v, o): s.value, s.offset, s.key, s.topic, s.partition = v, o, None, "r", 0
recs = [Rec(orjson.dumps({"stream_id": f"lat-{i % 500}", "ts": 1795000000000 + i,
                          "values": [50, 0.1, 3, 20]}), i) for i in range(2000)]
batch = decode_batch(recs, FeatureSpec(F))
res = Engine(b, max_streams=1000).process(batch.stream_ids, batch.ts, batch.values.astype(np.float32), 0)
def once():
    return [orjson.dumps(doc) for _, doc in batch_events(batch, res, b, 1795000000000)]
best = 1e9
for _ in range(7):
    t = time.perf_counter(); n = len(once()); best = min(best, time.perf_counter() - t)
print(json.dumps({"events": n, "us_per_event": round(best / n * 1e6, 2), "events_per_s": round(n / best)}))
if sys.argv[1:] == ["profile"]:
    cProfile.run("for _ in range(5): once()", "/tmp/alert_events.prof")
    pstats.Stats("/tmp/alert_events.prof").sort_stats("tottime").print_stats(14)
