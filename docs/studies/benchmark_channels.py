# docs/quality.md, session 31: channels that public multivariate benchmarks have and the six
# styles do not. SMD's machines carry channels that never move (0.0 throughout) and a few
# that switch between modes; MSL/SMAP carry one telemetry value beside many binary command
# channels (0, with a 1 for a few readings now and then). Does a fleet with such channels
# train with the shipped defaults, and does it flood? A style's fleet (its labels are on
# its own channels, so recall is scored as usual) with EXTRA channels appended to every
# segment: `const` (0.0 always), `cmd0..` (binary commands: on for 1-5 readings, about
# once in 300 readings, independently in history and evaluation), `mode` (a level that
# switches between two values every 300-900 readings). anomalyd and the baseline, as
# `anomalyd evaluate fleet` scores them. Nothing here is tuned on; seed 901 (neither dev nor test).
# EXTRA=counter appends instead a meter that only counts up (an energy or hours total: each
# reading adds a positive amount, so the evaluation lies beyond every value of the history),
# EXTRA=bursts a rate that is 0 most of the time and bursts through many values now and
# then (a disk's write rate), EXTRA=held sensors a gateway polls ten times per update (a
# random walk's value held for ten readings: as still as a command, hundreds of values),
# EXTRA=spiky a server metric with a heavy right tail (iid lognormal, session 32), EXTRA=noise
# as many iid Gaussian channels (what the number of channels alone does), EXTRA=heavy as many
# with symmetric heavy tails (Student t, 3 dof: a vibration's residual; session 34), EXTRA=zoo
# two each of heavy, spiky, held and bursts (eight at once, as a server's metrics are).
# EXTRA=sizes appends nothing: each stream's values are multiplied by its own factor, drawn
# log-uniform in [1/R, R] (R = env SPREAD, 10 unless set): machines of one kind in many
# sizes, a pump's power at 10x another's (session 35; the styles vary streams by tens of %).
# With IDLE=N too (session 36), each stream's evaluation segments (clean and anomalous)
# start with the machine idle for N readings: every channel at its first running value with
# sensor noise of u / 50 (u: the channel's step scale), then running as before (the labels
# lie after reading 200, so none is idle): a stream whose size is measured while it idles.
# Usage: [EXTRA=commands|counter|bursts|held|spiky|noise|heavy|zoo] PYTHONPATH=. .venv/bin/python docs/studies/benchmark_channels.py OUT STYLE SEED [STREAMS] [COMMANDS]
import json, os, sys
from dataclasses import replace
from pathlib import Path
import numpy as np
from training.data import StreamSeries
from training.fleet.baseline import Baseline, BaselineConfig
from training.fleet.evaluate import _pool, _score_both, _table, replay_engine, train_defaults
from training.fleet.styles import generate


def extra(rng, n, commands):
    const = np.zeros((n, 1))
    cmd = np.zeros((n, commands))
    for c in range(commands):
        t = 0
        while True:
            t += int(rng.exponential(300)) + 1
            if t >= n:
                break
            cmd[t : t + rng.integers(1, 6), c] = 1.0
    mode = np.zeros((n, 1))
    t, level = 0, float(rng.choice([10.0, 25.0]))
    while t < n:
        k = int(rng.integers(300, 900))
        mode[t : t + k] = level
        level = 35.0 - level
        t += k
    return np.concatenate([const, cmd, mode], axis=1)


def counter(rng, n, start):
    return (start + np.cumsum(rng.gamma(2.0, 0.5, n)))[:, None]


def bursts(rng, n, commands):
    out = np.zeros((n, commands))
    for c in range(commands):
        t = 0
        while True:
            t += int(rng.exponential(100)) + 1
            if t >= n:
                break
            k = int(rng.integers(2, 8))
            out[t : t + k, c] = rng.gamma(2.0, 50.0, min(k, n - t))
    return out


def spiky(rng, n, commands):
    # a server metric's heavy right tail (request rates, latencies): iid lognormal, never still
    return rng.lognormal(2.0, 1.0, (n, commands))


def held(rng, n, commands):
    walk = np.cumsum(rng.standard_normal((n // 10 + 1, commands)), axis=0)
    return np.repeat(walk, 10, axis=0)[:n]


def train_and_score(fl, work, label):
    """``anomalyd train``'s defaults on the fleet's history, both segments replayed cold,
    the baseline beside it; the run saved as WORK/run.json and printed as LABEL's table."""
    model = train_defaults(fl.history, fl.features, work, "auto")
    rows = (replay_engine(model, fl.clean), replay_engine(model, fl.anomalous))
    base = Baseline(BaselineConfig()).fit(fl.history)
    run = _score_both(fl, {"anomalyd": rows, "baseline": (base.replay(fl.clean), base.replay(fl.anomalous))})
    (work / "run.json").write_text(json.dumps(run))
    print(_table({label: {d: _pool([run], d) for d in run}}))
    return run


KIND = os.environ.get("EXTRA", "commands")
SPREAD = float(os.environ.get("SPREAD", "10"))
IDLE = int(os.environ.get("IDLE", "0"))


def sized(series, factors):
    return [StreamSeries(s.stream_id, s.ts_ms, (s.values * factors[s.stream_id]).astype(np.float32))
            for s in series]


def idle(series, unit, rng):
    out = []
    for i, s in enumerate(series):
        v = s.values.astype(np.float64)
        v[:IDLE] = v[IDLE] + rng.standard_normal((IDLE, v.shape[1])) * unit[i] / 50.0
        out.append(StreamSeries(s.stream_id, s.ts_ms, v.astype(np.float32)))
    return out


def widen(series, rng, commands, offset=None):
    out = []
    for i, s in enumerate(series):
        n = len(s.ts_ms)
        if KIND == "counter":  # each segment continues where the last one of the stream ended
            add = counter(rng, n, 0.0 if offset is None else offset[i])
        elif KIND == "bursts":
            add = bursts(rng, n, commands)
        elif KIND == "held":
            add = held(rng, n, commands)
        elif KIND == "spiky":
            add = spiky(rng, n, commands)
        elif KIND == "heavy":  # symmetric heavy tails (Student t, 3 dof): a vibration's residual
            add = 10.0 + 3.0 * rng.standard_t(3, (n, commands))
        elif KIND == "zoo":  # a server's heterogeneous metrics at once (session 34)
            add = np.concatenate(
                [10.0 + 3.0 * rng.standard_t(3, (n, 2)), spiky(rng, n, 2), held(rng, n, 2),
                 bursts(rng, n, 2)], axis=1)
        elif KIND == "noise":  # the same number of channels, Gaussian: what their count does
            add = 10.0 + 3.0 * rng.standard_normal((n, commands))
        else:
            add = extra(rng, n, commands)
        out.append(StreamSeries(s.stream_id, s.ts_ms, np.concatenate([s.values, add], axis=1).astype(np.float32)))
    return out


if __name__ == "__main__":
    out, style, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    streams = int(sys.argv[4]) if len(sys.argv) > 4 else 12
    commands = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    fl = generate(style, seed, streams, 2000, 1500)
    rng = np.random.default_rng(seed)
    if KIND == "sizes":
        ids = sorted({s.stream_id for s in fl.history})
        k = dict(zip(ids, np.exp(rng.uniform(-np.log(SPREAD), np.log(SPREAD), len(ids)))))
        fl = replace(fl, history=sized(fl.history, k), clean=sized(fl.clean, k),
                     anomalous=sized(fl.anomalous, k))
        KIND = f"sizes{SPREAD:g}"
        if IDLE:  # u in each stream's own size
            unit = fl.unit * np.array([k[s.stream_id] for s in fl.history])[:, None]
            fl = replace(fl, clean=idle(fl.clean, unit, rng), anomalous=idle(fl.anomalous, unit, rng))
            KIND += f"idle{IDLE}"
    elif KIND == "counter":
        names = ("total",)
    elif KIND in ("bursts", "held", "spiky", "noise", "heavy"):
        names = tuple(f"{KIND}{c}" for c in range(commands))
    elif KIND == "zoo":
        names = ("heavy0", "heavy1", "spiky0", "spiky1", "held0", "held1", "bursts0", "bursts1")
    else:
        names = ("const", *(f"cmd{c}" for c in range(commands)), "mode")
    if not KIND.startswith("sizes"):
        hist = widen(fl.history, rng, commands)
        end = [float(h.values[-1, -1]) for h in hist]  # a counter's evaluation continues from it
        fl = replace(fl, features=fl.features + names, history=hist,
                     clean=widen(fl.clean, rng, commands, end),
                     anomalous=widen(fl.anomalous, rng, commands, end))
    train_and_score(fl, out / f"{style}_s{seed}_{KIND}", f"{style}+")
