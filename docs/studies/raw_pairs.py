# docs/quality.md, session 38: a spike as a pair of opposite-signed one-step changes of one
# channel, each in the stream's own spread of the change (the difference rule's), model-free.
# Threshold at 1 incident per 10,000 clean readings (history + clean evaluation segment, cold);
# labels caught in [start, end + 5]. 'single' is the largest one-step change alone, for comparison.
# Usage: PYTHONPATH=. .venv/bin/python docs/studies/raw_pairs.py STYLE SEEDS [STREAMS]
import os, sys, types, numpy as np, torch
from training.fleet.styles import generate
from training.data import scaled_padded
from detector.core.difference import SHORT, DifferenceState, difference_step
from training.diffcal import difference_prior
RESOLVE, LATE, WARM = 10, 5, 10
def walk(series, sc, prior):
    xs, lens = scaled_padded(series, sc.mean, sc.std)
    b, f = len(series), xs.shape[2]
    st = DifferenceState(torch.zeros(b, SHORT * f), torch.zeros(b, f), torch.zeros(b, 2 * f), torch.zeros(b, 2 * f))
    xa = torch.from_numpy(xs); dz = np.zeros(xs.shape[:2] + (f,), np.float32)
    for t in range(xs.shape[1]):
        x = xa[:, t]; prev = st.last[:, :f]
        obs = ~torch.isnan(x)
        now = torch.where(obs, x, prev); sgn = torch.sign(now - prev)
        st, z = difference_step(st, x, obs, prior, 1000)
        dz[:, t] = (z[:, :f] * sgn).numpy()
    # pair: opposite signs, both judged (nonzero)
    p = np.zeros_like(dz)
    p[:, 1:] = np.where(dz[:, 1:] * dz[:, :-1] < 0, np.minimum(abs(dz[:, 1:]), abs(dz[:, :-1])), 0)
    p[:, :WARM] = 0
    d1 = abs(dz); d1[:, :WARM] = 0
    return [p[i, :lens[i]] for i in range(b)], [d1[i, :lens[i]] for i in range(b)]
def incidents(flag):
    n, last = 0, -10**9
    for i in np.flatnonzero(flag):
        if i - last > RESOLVE: n += 1
        last = i
    return n
def level(stats, budget=1e-4):
    tot = sum(len(s) for s in stats)
    cand = np.sort(np.concatenate([s[s > 0] for s in stats]))[::-1][:500]
    for c in cand:
        if sum(incidents(s >= c) for s in stats) > budget * tot:
            return c * 1.0001
    return cand[-1]
style, seeds = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
streams = int(sys.argv[3]) if len(sys.argv) > 3 else 12
for seed in seeds:
    fl = generate(style, seed, streams)
    h = np.concatenate([s.values for s in fl.history]).astype(np.float64)
    sc = types.SimpleNamespace(mean=np.nanmean(h, 0).astype(np.float32), std=np.nanstd(h, 0).astype(np.float32))
    prior = torch.tensor(difference_prior(fl.history, sc), dtype=torch.float32)
    hist, cln, anom = (walk(part, sc, prior) for part in (fl.history, fl.clean, fl.anomalous))
    for name, k in (("pair", 0), ("single", 1)):
        clean = [s.max(1) for s in hist[k] + cln[k]]
        thr = float(os.environ["AT"]) if "AT" in os.environ and name == "pair" else level(clean)
        an = anom[k]
        ids = {s.stream_id: i for i, s in enumerate(fl.anomalous)}
        caught = {}
        for L in fl.labels:
            i = ids[L.stream_id]; ts = fl.anomalous[i].ts_ms
            a = np.searchsorted(ts, L.start_ms); e = np.searchsorted(ts, L.end_ms, "right") + LATE
            caught.setdefault(L.kind, []).append(bool((an[i][a:e].max(1) >= thr).any()))
        print(style, seed, name, f"thr {thr:.2f}", " ".join(f"{k[:5]} {sum(v)}/{len(v)}" for k, v in caught.items()), flush=True)
