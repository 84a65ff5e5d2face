# docs/reliability.md: the SIGKILL x5 discrepancy is a float32 tie (session 5). Needs the model the
# fault test trained (a pytest tmp dir); run: .venv/bin/python docs/studies/faults_tie.py
exec(open("docs/studies/faults_diag_setup.py").read().split("base = run(100, 1)")[0])
from detector.core.statsrow import LAYOUT
torch.set_num_threads(1)
lim = None
for bs in (100, 37, 5):
    e = Engine(b, max_streams=10000, device="cpu", max_gap_ms=3600000)
    spec = FeatureSpec(b.features)
    sus = b.scoring.sustained
    scale = np.array(sus.scale) * sus.threshold
    for i in range(0, len(recs), bs):
        batch = decode_batch(recs[i:i+bs], spec)
        res = e.process(batch.stream_ids, batch.ts, batch.values.astype(np.float32), now_ms=int(batch.ts.max()))
        for j, sid in enumerate(batch.stream_ids):
            if sid == "pump-00013":
                t = np.datetime64(int(batch.ts[j]), "ms")
                if np.datetime64("2026-11-21T04:20:15") <= t <= np.datetime64("2026-11-21T04:20:21"):
                    slot = e.store.slot_of(sid)
                    row = LAYOUT.split(e.store.stats[slot:slot+1], len(b.features))
                    d = row.drift[0].numpy()
                    print(bs, t, "rules", int(res.rules[j]), "drift/limit", np.round(np.abs(d)/scale, 7), "score", res.score[j], "thr", b.scoring.threshold, "peak/thr", np.abs(res.errors[j]).max()/b.scoring.peak.threshold)
