# Setup shared by docs/studies/faults_tie.py: the fault test's model, fleet and records (session 5).
import sys, torch
from types import SimpleNamespace as R
import numpy as np
from detector.artifacts import load_current
from detector.core.engine import Engine
from detector.core.events import batch_events
from detector.core.schema import FeatureSpec, decode_batch
from detector.sandbox.messages import to_json_messages
from detector.sandbox.simulation import Fleet, FleetSpec
import glob
mdir = sorted(glob.glob("/tmp/pytest-of-root/pytest-*/faults-trained0/models"))[-1]
from pathlib import Path; b = load_current(Path(mdir))
fleet = Fleet(FleetSpec(streams=40, seed=23, anomaly_rate=4.0))
msgs = [m for block in fleet.blocks(500) for m in to_json_messages(block, 5)]
parts = {}
recs = []
for k, v in msgs:
    p = hash(k) % 4
    o = parts.get(p, 0); parts[p] = o + 1
    recs.append(R(topic="t", partition=p, offset=o, key=k, value=v))
def run(bs, threads):
    torch.set_num_threads(threads)
    e = Engine(b, max_streams=10000, device="cpu", max_gap_ms=3600000)
    out = {}
    spec = FeatureSpec(b.features)
    for i in range(0, len(recs), bs):
        batch = decode_batch(recs[i:i+bs], spec)
        res = e.process(batch.stream_ids, batch.ts, batch.values.astype(np.float32), now_ms=int(batch.ts.max()))
        for _, d in batch_events(batch, res, b, 0):
            out[d["alert_id"]] = d
    return out
base = run(100, 1)
for bs, th in [(37, 1), (2000, 1), (100, 2), (500, 2)]:
    o = run(bs, th)
    print(bs, th, len(base), len(o), "missing", len(base.keys() - o.keys()), "extra", len(o.keys() - base.keys()))

from detector.checkpointing.codec import encode_streams, decode, StateShape
from detector.checkpointing.checkpointer import _snapshot
def run_restore(bs, splits, codec):
    torch.set_num_threads(1)
    e = Engine(b, max_streams=10000, device="cpu", max_gap_ms=3600000)
    out = {}
    spec = FeatureSpec(b.features)
    for j, i in enumerate(range(0, len(recs), bs)):
        if j in splits:
            ids = list(e.store.ids()) if hasattr(e.store, "ids") else sorted({r.key.decode() for r in recs})
            snap = e.store.snapshot(ids)
            e2 = Engine(b, max_streams=10000, device="cpu", max_gap_ms=3600000)
            if codec:
                shape = StateShape.of(e.bundle, e.store.stat_width)
                vals = encode_streams(shape, b.name, b.version, "t", snap, [0]*len(ids), [0]*len(ids))
                snap = _snapshot([decode(v) for v in vals], shape)
            e2.store.restore(snap, 0)
            e = e2
        batch = decode_batch(recs[i:i+bs], spec)
        res = e.process(batch.stream_ids, batch.ts, batch.values.astype(np.float32), now_ms=int(batch.ts.max()))
        for _, d in batch_events(batch, res, b, 0):
            out[d["alert_id"]] = d
    return out
for splits in [set(range(5, 40, 7)), set(range(1, 40, 3))]:
    for codec in (False, True):
        o = run_restore(100, splits, codec)
        miss = base.keys() - o.keys(); ex = o.keys() - base.keys()
        print("splits", len(splits), "codec", codec, "missing", len(miss), "extra", len(ex), [ (base[k]["stream_id"], base[k]["event"], base[k]["ts"]) for k in list(miss)[:3]])
