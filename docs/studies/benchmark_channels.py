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
# Usage: PYTHONPATH=. .venv/bin/python docs/studies/benchmark_channels.py OUT STYLE SEED [STREAMS] [COMMANDS]
import json, sys
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


def widen(series, rng, commands):
    return [
        StreamSeries(s.stream_id, s.ts_ms, np.concatenate([s.values, extra(rng, len(s.ts_ms), commands)], axis=1).astype(np.float32))
        for s in series
    ]


if __name__ == "__main__":
    out, style, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    streams = int(sys.argv[4]) if len(sys.argv) > 4 else 12
    commands = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    fl = generate(style, seed, streams, 2000, 1500)
    rng = np.random.default_rng(seed)
    names = fl.features + ("const", *(f"cmd{c}" for c in range(commands)), "mode")
    fl = replace(fl, features=names, history=widen(fl.history, rng, commands),
                 clean=widen(fl.clean, rng, commands), anomalous=widen(fl.anomalous, rng, commands))
    work = out / f"{style}_s{seed}"
    model = train_defaults(fl.history, fl.features, work, "auto")
    rows = (replay_engine(model, fl.clean), replay_engine(model, fl.anomalous))
    base = Baseline(BaselineConfig()).fit(fl.history)
    run = _score_both(fl, {"anomalyd": rows, "baseline": (base.replay(fl.clean), base.replay(fl.anomalous))})
    (work / "run.json").write_text(json.dumps(run))
    print(_table({f"{style}+": {d: _pool([run], d) for d in run}}))
