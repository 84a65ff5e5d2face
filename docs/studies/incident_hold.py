# docs/quality.md, session 21: an incident held open while a channel stays away from where
# the stream was before it opened (offline, on the replays of the shipped defaults).
# Usage: PYTHONPATH=. python docs/studies/incident_hold.py fleet OUT STYLE SEED
#        PYTHONPATH=. python docs/studies/incident_hold.py skab OUT DATA
# The replay's incidents (opened / inside per reading) are re-walked per stream: an open
# incident that would resolve is kept open while some channel's recent level (EW over
# FAST readings) lies more than K spreads from its reference (EW mean and variance over
# SLOW readings, updated only while no incident is open, variance floored at FLOOR of the
# scaler's), for at most MAX_LEN readings. Set before any run; not tuned.
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from detector.artifacts import load_current
from training.fleet.evaluate import TOLERANCE_READINGS, replay_engine, train_defaults
from training.fleet.score import COLD_READINGS, Flagged, clean_rates, label_scores

FAST, SLOW, K, FLOOR, MAX_LEN, RESOLVE = 8, 200, 4.0, 0.01, 2000, 10


def held(rows, values, scale):
    """One stream's rows (time order) with the hold applied; values (T, F) raw."""
    af, as_ = 2 / (FAST + 1), 2 / (SLOW + 1)
    f = np.full(values.shape[1], np.nan)
    s, v, n = f.copy(), np.zeros(values.shape[1]), np.zeros(values.shape[1])
    floor = FLOOR * scale**2
    inside = [r.incident for r in rows]
    ends = [inside[t] and (t + 1 == len(rows) or not inside[t + 1] or rows[t + 1].anomaly)
            for t in range(len(rows))]
    out, open_, count, start, extra = [], False, 0, 0, 0
    for t, r in enumerate(rows):
        x = values[t]
        obs = ~np.isnan(x)
        f = np.where(obs, np.where(np.isnan(f), x, f + af * (x - f)), f)
        opened = False
        if not open_ and r.anomaly:
            open_, start, count, opened = True, t, 0, True
        is_in = open_
        if open_ and not opened:
            if inside[t] and not ends[t]:
                count = 0
            elif ends[t]:
                count = max(count, RESOLVE)
            else:
                count += 1
            away = (n >= SLOW) & (np.abs(f - s) > K * np.sqrt(np.maximum(v, floor)))
            hold = bool(away.any()) and t - start < MAX_LEN
            if count >= RESOLVE and not hold:
                open_ = False
            elif not inside[t]:
                extra += 1
        if r.anomaly and opened is False and is_in:
            pass  # an original opening inside a held incident: merged
        out.append(Flagged(r.stream_id, r.ts_ms, opened, is_in))
        if not open_:  # the reference learns only outside incidents
            first = obs & np.isnan(s)
            d = np.where(obs & ~first, x - s, 0.0)
            s = np.where(first, x, np.where(obs, s + as_ * d, s))
            v = np.where(obs & ~first, (1 - as_) * (v + as_ * d * d), v)
            n = n + obs
    return out, extra


def apply(rows, series, scale):
    by = {}
    for r in rows:
        by.setdefault(r.stream_id, []).append(r)
    out, extra = [], 0
    for ser in series:
        rs = sorted(by[ser.stream_id], key=lambda r: r.ts_ms)
        assert len(rs) == len(ser.ts_ms)
        h, e = held(rs, np.asarray(ser.values, dtype=np.float64), scale)
        out += h
        extra += e
    return out, extra


def replay_with(mdir, series, hold):
    """The live engine's replay with the incidents' hold set to ``hold`` (0: off)."""
    import training.fleet.evaluate as fe
    orig = fe.load_current

    def patched(d):
        b = orig(d)
        inc = dataclasses.replace(b.scoring.incidents, hold=hold)
        return dataclasses.replace(b, scoring=dataclasses.replace(b.scoring, incidents=inc))

    fe.load_current = patched
    try:
        return fe.replay_engine(mdir, series)
    finally:
        fe.load_current = orig


def fleet(out, style, seed):
    from training.fleet.styles import generate
    fl = generate(style, seed, 12, 2000, 1500)
    mdir = train_defaults(fl.history, fl.features, out, "auto")
    scale = np.asarray(load_current(mdir).scaler.std)
    tol = TOLERANCE_READINGS * round(fl.style.period_s * 1000)
    res = {}
    clean, bad = replay_with(mdir, fl.clean, 0.0), replay_with(mdir, fl.anomalous, 0.0)
    res["no hold"] = (label_scores(bad, fl.labels, tol), clean_rates(clean, COLD_READINGS), 0)
    hc, ec = apply(clean, fl.clean, scale)
    hb, eb = apply(bad, fl.anomalous, scale)
    res["offline"] = (label_scores(hb, fl.labels, tol), clean_rates(hc, COLD_READINGS), ec)
    ec2, eb2 = replay_engine(mdir, fl.clean), replay_engine(mdir, fl.anomalous)
    res["engine"] = (label_scores(eb2, fl.labels, tol), clean_rates(ec2, COLD_READINGS), 0)
    for name, (lab, cl, ex) in res.items():
        print(f"{style} s{seed} {name:8s} recall {lab['recall']:.2f} prec {lab['precision']:.2f} "
              f"false {lab['false_incidents']} | clean F/10k c {cl['cold']['false_per_10k']} "
              f"w {cl['warm']['false_per_10k']} in% {100 * cl['all']['share_in_incidents']:.3f} "
              f"(held clean readings {ex}) kinds {lab.get('caught_by_kind')}", flush=True)


def skab(out, data):
    from training.skab import evaluate as ev
    from training.data import StreamSeries
    rep = ev.evaluate_skab(data, out)  # the engine's hold as built (and the baseline)
    print(json.dumps({k: {d: (v['recall'], v['precision'], v['false_incidents'], v['points'])
                          for d, v in part.items()} for k, part in rep["summary"].items()}))
    paths = sorted(p for p in data.rglob("*.csv") if p.is_file())
    exps = [ev.load_experiment(p, p.relative_to(data).with_suffix("").as_posix()) for p in paths]
    tests = [e for e in exps if e.anomaly.any()]
    split = ev.split_of([p for p, e in zip(paths, exps) if e.anomaly.any()])
    sid_split = {p.relative_to(data).with_suffix("").as_posix(): s for p, s in split.items()}
    mdir = Path(rep["model_dir"])
    scale = np.asarray(load_current(mdir).scaler.std)
    whole = [StreamSeries(e.stream_id, e.ts_ms, e.values) for e in tests]
    rows = replay_with(mdir, whole, 0.0)
    hrows, extra = apply(rows, whole, scale)
    erows = replay_engine(mdir, whole)
    labels = [ev.Label(e.stream_id, e.stream_id.split("/")[0], int(e.ts_ms[a]), int(e.ts_ms[b]))
              for e in tests for a, b in ev._runs(e.anomaly)]
    for part in ("all", "dev", "test"):
        chosen = [e for e in tests if part == "all" or sid_split[e.stream_id] == part]
        for name, r in (("no hold", rows), ("offline", hrows), ("engine", erows)):
            sc = ev._score(r, chosen, labels)
            print(f"{part:4s} {name:8s} recall {sc['recall']:.2f} prec {sc['precision']:.2f} "
                  f"false {sc['false_incidents']} F/10k {sc['false_per_10k_normal']} "
                  f"points {sc['points']}", flush=True)


if __name__ == "__main__":
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "fleet":
        fleet(out, sys.argv[3], int(sys.argv[4]))
    else:
        skab(out, Path(sys.argv[3]))
