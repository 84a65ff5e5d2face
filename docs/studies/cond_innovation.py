# docs/quality.md, session 44: a level judged against the stream's other channels AND
# against its own recent past. Offline, online estimates only (nothing the simulator knows),
# on the fleet's own readings (quantised; a missing cell carries the channel's last value):
#   r = x - EW(x, SLOW)                    each channel's level against its reference
#   c_f = (P r)_f / sqrt(P_ff)              ... given the stream's other channels (P: the
#                                           inverse of r's EW covariance over MEM readings,
#                                           pooled with PRIOR readings of the fleet's
#                                           diagonal, as the shift rule pools its own)
#   eta = (c - phi c_prev) / sd             its AR(1) innovation, phi and sd EW over MEM
# and a statistic per reading, the largest over channels:
#   z     |c| (the shift rule's kind of statistic, with fast = 1)
#   eta   |eta|
#   bank  max over spans L in 1, 8, 32, 128 of |EW_L(eta)| in its own spread (O(1) state)
#   glr   oracle_bound.py's step/ramp/pulse/drop shapes over W=120 offsets (O(W) state),
#         with each channel's median phi over the replay (the anomalous segment included:
#         a small look-ahead the other statistics do not take)
#   cand  the step shape's GLR, (eta_lo + a sum eta(lo+1..t))^2 / (1 + (t-lo) a^2) with
#         a = 1 - phi, for one remembered onset lo per sign (O(1) state): a reading's own
#         |eta| replaces the onset when it scores more than the remembered one does now,
#         or when that one is more than W readings old
# Its level: the least at which the clean readings (history and clean evaluation segment,
# replayed from cold, nothing judged in a stream's first WARM readings) open at most
# BUDGET incidents per 10,000 -- in-sample, as oracle_bound.py. A label is caught when the
# statistic reaches the level within [start, end + 5 readings].
# With MODEL_DIR (the fleet's trained model, e.g. from probe_fleets.py or fleet_seeds.py):
# the labels anomalyd catches (its own evaluation: the evaluation segment replayed cold)
# and the union with the statistic's.
# FAST=8: r = EW(x, 8) - EW(x, SLOW), the shift rule's own d (its covariance, its z).
# SKIP=1: a missing cell is judged by nothing and teaches nothing (instead of carried).
# Usage: [SKIP=1] PYTHONPATH=. .venv/bin/python docs/studies/cond_innovation.py \
#            STYLE|PROBE SEED STREAMS STAT[,STAT..] [MODEL_DIR] [BUDGET]
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import oracle_bound as ob  # noqa: E402
from probe_fleets import PROBES  # noqa: E402

from training.fleet.styles import STYLES, generate  # noqa: E402

SLOW, MEM, PRIOR, WARM, W, SPANS = 200, 1000, 50.0, 250, 120, (1, 8, 32, 128)
SKIP = os.environ.get("SKIP") == "1"  # missing cells skipped, not carried forward
FAST = int(os.environ.get("FAST", "1"))  # r = EW(x, FAST) - EW(x, SLOW): 8 is the shift rule's d


def ffill(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float64)
    for t in range(1, len(v)):
        m = np.isnan(v[t])
        v[t, m] = v[t - 1, m]
    return np.nan_to_num(v)


def ew_residual(z: np.ndarray) -> np.ndarray:
    out, m, q = np.empty_like(z), z[0].copy(), z[0].copy()
    for t in range(len(z)):
        q += 2 / (FAST + 1) * (z[t] - q)
        out[t] = q - m
        m += 2 / (SLOW + 1) * (z[t] - m)
    return out


def run(
    v: np.ndarray, prior: np.ndarray, seen: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(c, eta, phi), each (T, F), for one stream's scaled readings ``v`` (T, F); with
    ``seen`` (T, F) (SKIP=1), a missing cell's r is 0 and its c and eta are 0, and it
    moves neither the channel's coefficient, spread nor previous value."""
    t_n, f = v.shape
    a_m = 2 / (MEM + 1)
    r_all = ew_residual(v)
    cov, w, cp = np.zeros((f, f)), 0.0, np.zeros(f)
    sxy, sxx, see = np.zeros(f), np.zeros(f), np.zeros(f)
    c_out, e_out, p_out = np.zeros((t_n, f)), np.zeros((t_n, f)), np.zeros((t_n, f))
    for t in range(t_n):
        r = r_all[t] if seen is None else np.where(seen[t], r_all[t], 0.0)
        w = (1 - a_m) * w + a_m
        cov = (1 - a_m) * cov + a_m * np.outer(r, r)
        n_eff = min(t + 1, MEM / 2)
        pooled = (cov / w * n_eff + PRIOR * np.diag(prior)) / (n_eff + PRIOR)
        p = np.linalg.inv(pooled + 0.01 * np.diag(np.diag(pooled)))
        c = (p @ r) / np.sqrt(np.diag(p))
        ok = np.ones(f, bool) if seen is None else seen[t]
        c = np.where(ok, c, 0.0)
        sxy = np.where(ok, (1 - a_m) * sxy + a_m * c * cp, sxy)
        sxx = np.where(ok, (1 - a_m) * sxx + a_m * cp * cp, sxx)
        phi = np.clip(sxy / np.maximum(sxx, 1e-9), 0, 0.99) if t > 50 else np.zeros(f)
        eta = np.where(ok, c - phi * cp, 0.0)
        see = np.where(ok, (1 - a_m) * see + a_m * eta * eta, see)
        c_out[t], e_out[t], p_out[t] = c, eta / np.sqrt(np.maximum(see / w, 1e-9)), phi
        cp = np.where(ok, c, cp)
    return c_out, e_out, p_out


def statistic(name: str, c: np.ndarray, eta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    if name == "z":
        s = np.abs(c).max(1)
    elif name == "eta":
        s = np.abs(eta).max(1)
    elif name == "bank":
        s = np.zeros(len(c))
        for span in SPANS:
            al = 2 / (span + 1)
            acc, ew = np.zeros(eta.shape[1]), np.zeros_like(eta)
            for t in range(len(eta)):
                acc = (1 - al) * acc + al * eta[t]
                ew[t] = acc
            s = np.maximum(s, np.abs(ew).max(1) / np.sqrt(al / (2 - al)))
    elif name == "cand":
        s = np.zeros(len(c))
        a = 1 - phi
        f = eta.shape[1]
        val = np.zeros((2, f))  # per sign: eta_lo + a * sum since
        age = np.full((2, f), W)
        best = np.zeros(len(c))
        for t in range(len(eta)):
            val = val + a[t] * eta[t]
            age = age + 1
            cur = val**2 / (1 + (age - 0) * a[t] ** 2)
            for k, sign in enumerate((1.0, -1.0)):
                new = sign * eta[t] > 0
                take = (age[k] > W) | (new & (eta[t] ** 2 > np.where(sign * val[k] > 0, cur[k], 0)))
                val[k] = np.where(take, eta[t], val[k])
                age[k] = np.where(take, 0, age[k])
            cur = val**2 / (1 + age * a[t] ** 2)
            ok = np.stack([val[0] > 0, val[1] < 0])
            best[t] = np.sqrt(np.where(ok, cur, 0).max())
        s = best
    elif name == "glr":
        s = ob.glr(eta, np.median(phi[WARM:], 0), W)
    else:
        raise SystemExit(f"unknown statistic {name!r}")
    s[:WARM] = 0
    return s


def anomalyd_caught(model_dir: Path, data) -> set[int]:
    from training.fleet.evaluate import replay_engine
    from training.fleet.score import label_scores

    rows = replay_engine(model_dir, data.anomalous)
    period = int(np.median(np.diff(data.anomalous[0].ts_ms)))
    return {k for k, lab in enumerate(data.labels) if label_scores(rows, [lab], 5 * period)["caught"]}


def main() -> None:
    name, seed, streams = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    stats = sys.argv[4].split(",")
    model_dir = Path(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[5] != "-" else None
    budget = float(sys.argv[6]) if len(sys.argv) > 6 else 1.0
    if name in PROBES:
        STYLES[name], streams, _ = PROBES[name]
    data = generate(name, seed, streams, 2000, 1500)
    hist = [ffill(h.values) for h in data.history]
    mu, sd = np.mean([h.mean(0) for h in hist], 0), np.mean([h.std(0) for h in hist], 0)
    prior = np.mean([np.var(ew_residual((h - mu) / sd)[WARM:], 0) for h in hist], 0)
    runs = {
        part: [run((ffill(np.concatenate([h.values, e.values])) - mu) / sd, prior,
                   ~np.isnan(np.concatenate([h.values, e.values])) if SKIP else None)
               for h, e in zip(data.history, getattr(data, part), strict=True)]
        for part in ("clean", "anomalous")
    }
    ids = [h.stream_id for h in data.history]
    theirs = anomalyd_caught(model_dir, data) if model_dir else None
    kinds = sorted({lab.kind for lab in data.labels})
    if theirs is not None:
        got = Counter(data.labels[k].kind for k in theirs)
        print(f"{name} {seed} anomalyd      " + " ".join(f"{k} {got[k]}" for k in kinds))
    for stat in stats:
        clean = [statistic(stat, *r) for r in runs["clean"]]
        bad = [statistic(stat, *r) for r in runs["anomalous"]]
        level = ob.threshold(clean, budget)
        mine = set()
        for k, lab in enumerate(data.labels):
            i = ids.index(lab.stream_id)
            ts = np.concatenate([data.history[i].ts_ms, data.anomalous[i].ts_ms])
            period = int(np.median(np.diff(ts)))
            m = (ts >= lab.start_ms) & (ts <= lab.end_ms + 5 * period)
            if bad[i][m].max() >= level:
                mine.add(k)
        total = Counter(lab.kind for lab in data.labels)
        rows = [("", mine)] + ([(" + anomalyd", mine | theirs)] if theirs is not None else [])
        for tag, caught in rows:
            got = Counter(data.labels[k].kind for k in caught)
            print(
                f"{name} {seed} {stat}{tag} (level {level:.2f}) "
                + " ".join(f"{k} {got[k]}/{total[k]}" for k in kinds),
                flush=True,
            )


if __name__ == "__main__":
    main()
