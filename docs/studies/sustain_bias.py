# docs/quality.md, session 11: the sustained rule on its own, with and without each stream's
# own persistent bias taken out of its signed errors. A model that fits some streams of a
# fleet worse than others leaves them a steady signed error on a channel; the rule's limit is
# fleet-wide, so those streams open sustained incidents again and again (dev seed 1 daily's
# stream 8, session 10; the pump fleet's worst streams). Here, per stream and feature,
#   bias(t) = EW mean of the signed errors before t (memory M readings), shrunk towards 0
#             by P readings' worth of prior: bias * n / (n + P), n = min(readings, M),
# and the rule averages e - bias instead of e. Both variants calibrated the same way on the
# model's clean history (scale = the average's spread; level = the budget's tail fit at the
# sustained share of 0.5 / 10k), then: false clusters per 10k on the clean evaluation
# segment (cold), labels caught on the anomalous one. Every threshold infinite (no
# protection), so this is the statistic alone, not the engine.
# EVAL=20000: a longer clean segment (the same streams, a new noise realisation; labels are
# then not scored) for streams older than the 1,500 readings of the evaluation.
# "own spread": the average over the stream's own RMS of it instead (fleet scale as prior).
# ONLY=spread: run the variants whose name holds it.
# Usage: [M=1000 P=100 EVAL=1500 ONLY=..] \
#   .venv/bin/python docs/studies/sustain_bias.py DEVDIR STYLE SEED
#   DEVDIR: fleet_seeds.py's output (DEVDIR/STYLE/sSEED/model)
"""The sustained statistic against each stream's own bias: false clusters and labels caught."""
import math
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from detector.artifacts import load_current
from training.budget import SHARES, cluster_peaks, rate_level
from training.calibrate import EngineRun, run_engine, sustained_averages
from training.fleet.styles import generate

M, P = int(os.environ.get("M", "1000")), float(os.environ.get("P", "100"))
EVAL = int(os.environ.get("EVAL", "1500"))
dev, style, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
bundle = load_current(dev / style / f"s{seed}" / "model")
streams = 12
fleet = generate(style, seed, streams, 2000, EVAL)
sus = bundle.scoring.sustained
never = replace(bundle.scoring, threshold=math.inf, protect_state=False,
                sustained=replace(sus, threshold=math.inf))
args = (bundle.module, bundle.scaler, bundle.features)
runs = {k: run_engine(*args, getattr(fleet, k), never, collect_from=[0] * streams)
        for k in ("history", "clean", "anomalous")[: 3 if EVAL == 1500 else 2]}


def debiased(run: EngineRun) -> EngineRun:
    e = run.errors.astype(np.float64)
    out = np.empty_like(e)
    first = np.flatnonzero(np.r_[True, run.stream[1:] != run.stream[:-1]])
    for a, b in zip(first, np.r_[first[1:], len(e)], strict=True):
        m = np.zeros(e.shape[1])
        for n, k in enumerate(range(a, b)):
            out[k] = e[k] - m * min(n, M) / (min(n, M) + P)
            m = np.where(run.observed[k], m + (e[k] - m) / min(n + 1, M), m)
    return replace(run, errors=out.astype(np.float32))


def own_spread(avg: np.ndarray, run: EngineRun, scale: np.ndarray) -> np.ndarray:
    """Each reading's averages over the stream's own RMS of them so far (memory M readings),
    pooled with the fleet's scale as P readings' worth: a stream that always errs one way
    is judged against that, a quiet stream against its quiet."""
    out = np.empty_like(avg)
    first = np.flatnonzero(np.r_[True, run.stream[1:] != run.stream[:-1]])
    for a, b in zip(first, np.r_[first[1:], len(avg)], strict=True):
        ms = np.zeros(avg.shape[1])
        for n, k in enumerate(range(a, b)):
            w = min(n, M)
            out[k] = avg[k] / np.sqrt((P * scale**2 + w * ms) / (P + w))
            ms = ms + (avg[k] ** 2 - ms) / min(n + 1, M)
    return out


def statistic(
    run: EngineRun, scale: np.ndarray | None, own: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    avg, ready = sustained_averages(run, sus.span)
    if scale is None:
        scale = np.maximum(avg[ready & (run.index >= never.warmup)].std(axis=0), 1e-6)
    z = np.abs(own_spread(avg, run, scale) if own else avg / scale).max(axis=1)
    return np.where(ready & (run.index >= never.warmup + sus.span), z, -np.inf), scale


share = SHARES["sustained"] / sum(SHARES[r] for r in ("error", "peak", "sustained", "shift"))
labels = fleet.labels
tol = 5 * round(fleet.style.period_s * 1000)  # TOLERANCE
VARIANTS = (
    ("as shipped", lambda r: r, False),
    (f"bias out (M={M}, P={P:g})", debiased, False),
    (f"own spread (M={M}, P={P:g})", lambda r: r, True),
)
for name, tf, own in VARIANTS:
    if os.environ.get("ONLY") and os.environ["ONLY"] not in name:
        continue
    h = tf(runs["history"])
    zh, scale = statistic(h, None, own)
    level = rate_level(zh, h.stream, share * 0.5 / 1e4, 10, 3.5)
    zc, _ = statistic(tf(runs["clean"]), scale, own)
    c = runs["clean"]
    false = cluster_peaks(np.where(zc >= level, zc, -np.inf), c.stream, level, 10).size
    if "anomalous" not in runs:
        print(f"{style} s{seed} {name:26s}: level {level:5.2f}, false clusters "
              f"{false} ({false / len(zc) * 1e4:.2f} per 10k) in {len(zc)} clean readings")
        continue
    za, _ = statistic(tf(runs["anomalous"]), scale, own)
    a = runs["anomalous"]
    ids = [s.stream_id for s in fleet.anomalous]
    t_of = np.array([fleet.anomalous[s].ts_ms[i] for s, i in zip(a.stream, a.index, strict=True)])
    caught = sum(bool(np.any((za >= level) & (a.stream == ids.index(lb.stream_id))
                             & (t_of >= lb.start_ms) & (t_of <= lb.end_ms + tol)))
                 for lb in labels)
    print(f"{style} s{seed} {name:26s}: level {level:5.2f}, false clusters "
          f"{false} ({false / len(zc) * 1e4:.2f} per 10k), caught {caught}/{len(labels)}",
          flush=True)
