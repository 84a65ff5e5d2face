# docs/quality.md, session 18. Usage: PYTHONPATH=. .venv/bin/python docs/studies/spike_return.py STYLE SEED MODEL_DIR
# Offline: the spike rule's pair statistic with and without the value's own return (the
# reading after the jump moves back by at least half the jump, on the channel that pairs).
# Do clean data's largest pairs (a cycle's edge the model overshoots) go, and do labels stay?
import sys, numpy as np
sys.path.insert(0, "docs/studies")
from studylib import setup
style, seed, b, fleet, run = setup()
def changes(series, r):
    """Per collected reading, (d, d_prev): the value's change from the last observed value,
    and that of the reading before it; 0 where missing."""
    out = {}
    for i, s in enumerate(series):
        v = s.values.astype(np.float64)
        obs = ~np.isnan(v)
        last = np.full(v.shape[1], np.nan); d = np.zeros_like(v)
        for t in range(len(v)):
            d[t] = np.where(obs[t] & ~np.isnan(last), v[t] - last, 0.0)
            last = np.where(obs[t], v[t], last)
        out[i] = d
    d = np.stack([out[s][k] for s, k in zip(r.stream, r.index)])
    dp = np.stack([out[s][k - 1] if k > 0 else np.zeros(d.shape[1]) for s, k in zip(r.stream, r.index)])
    return d, dp
def stats(series, r):
    e = np.where(r.observed, r.errors, 0.0)
    opp = e * r.e_prev < 0
    pair = np.where(opp, np.minimum(np.abs(e), np.abs(r.e_prev)), 0.0)
    d, dp = changes(series, r)
    back = (d * dp < 0) & (np.abs(d) >= 0.5 * np.abs(dp))
    return pair.max(axis=1), np.where(back, pair, 0.0).max(axis=1)
period = np.median(np.diff(fleet.anomalous[0].ts_ms))
for name, ser in (("history", fleet.history), ("clean", fleet.clean)):
    r = run(ser)
    p, q = stats(ser, r)
    print(name, len(p), "top pairs  as now:", np.round(np.sort(p)[-8:], 2), " with return:", np.round(np.sort(q)[-8:], 2))
    print(name, "  quantiles 0.999/0.9999 now", np.round(np.quantile(p, [0.999, 0.9999]), 2), "with return", np.round(np.quantile(q, [0.999, 0.9999]), 2))
r = run(fleet.anomalous)
p, q = stats(fleet.anomalous, r)
ids = np.array([fleet.anomalous[i].stream_id for i in r.stream])
ts = np.array([fleet.anomalous[i].ts_ms[j] for i, j in zip(r.stream, r.index)])
for L in sorted(fleet.labels, key=lambda L: L.kind):
    if L.kind not in ("spike", "noise_burst", "level_shift"):
        continue
    m = (ids == L.stream_id) & (ts >= L.start_ms) & (ts <= L.end_ms + 5 * period)
    print(L.kind, L.stream_id, "max pair now", round(float(p[m].max()), 2), "with return", round(float(q[m].max()), 2))
