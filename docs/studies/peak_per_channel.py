# docs/quality.md, session 13. Usage: .venv/bin/python docs/studies/peak_per_channel.py STYLE SEED MODEL_DIR [...]
# Per-channel peak thresholds vs one threshold on the max over channels (rules-off errors).
import sys, numpy as np
sys.path.insert(0, "docs/studies")
from studylib import setup
from training.budget import rate_level, cluster_peaks
style, seed, b, fleet, run = setup()
hist, clean, anom = (run(s) for s in (fleet.history, fleet.clean, fleet.anomalous))
F = len(b.features); rate = 0.4 / 1.4 * 0.5 / 1e4
ab = lambda r: np.abs(np.where(r.observed, r.errors, 0.0)).astype(np.float64)
eh, ec, ea = ab(hist), ab(clean), ab(anom)
st = lambda r: r.stream.astype(np.int64)
g = rate_level(eh.max(1), st(hist), rate, 10, 3.5)
tc = np.array([rate_level(eh[:, c], st(hist), rate / F, 10, 3.5) for c in range(F)])
print(style, seed, "global peak thr %.2f (shipped %.2f); per channel" % (g, b.scoring.peak.threshold), np.round(tc, 2))
ids = np.array([fleet.anomalous[i].stream_id for i in anom.stream]); ts = np.array([fleet.anomalous[i].ts_ms[j] for i, j in zip(anom.stream, anom.index)])
period = np.median(np.diff(fleet.anomalous[0].ts_ms))
for name, flag_a, flag_c in (("global", ea.max(1) >= g, ec.max(1) >= g), ("per-channel", (ea >= tc).any(1), (ec >= tc).any(1))):
    fc = cluster_peaks(flag_c.astype(float), st(clean), 0.5, 10).size
    caught = {}
    for L in fleet.labels:
        m = (ids == L.stream_id) & (ts >= L.start_ms) & (ts <= L.end_ms + 5 * period)
        c = caught.setdefault(L.kind, [0, 0]); c[0] += bool(flag_a[m].any()); c[1] += 1
    print(f"  {name:12s} clean false clusters {fc} in {len(ec)};", " ".join(f"{k[:5]} {v[0]}/{v[1]}" for k, v in sorted(caught.items())))
