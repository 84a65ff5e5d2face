# docs/quality.md, session 12: single-stream files shaped like public multivariate benchmarks.
# Usage: .venv/bin/python docs/studies/public_shapes.py gen servers|plant DIR
#        anomalyd train --source csv --input DIR/train.csv --model-dir DIR/M
#        anomalyd replay --model-dir DIR/M DIR/test.csv --out DIR/out.jsonl
#        .venv/bin/python docs/studies/public_shapes.py why DIR/M DIR/test.csv
# servers: 38 channels of six kinds (constant at 0, rare 0/1 events, a shared wandering
#   load, a daily cycle, a quantised random walk, a huge-scale load copy), 5 level shifts
#   of 8 training std in the test half (their windows are printed); SMD/SMAP-like.
# plant: 4 discrete actuators switching every 150-700 readings, 12 sensors following them
#   with first-order lags; clean test half; SWaT-like. Nothing was chosen on these files.
import csv
import sys
from pathlib import Path

import numpy as np

T0 = 1_795_219_200_000


def _write(d: Path, names: list[str], x: np.ndarray, step_ms: int) -> None:
    half = len(x) // 2
    for name, rows in (("train", range(half)), ("test", range(half, len(x)))):
        with open(d / f"{name}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["ts", *names])
            for i in rows:
                w.writerow([T0 + i * step_ms] + [f"{v:.6g}" for v in x[i]])


def servers(d: Path) -> None:
    rng = np.random.default_rng(0)
    t_all, f_all = 10000, 38
    t = np.arange(t_all)
    x = np.zeros((t_all, f_all))
    load = np.cumsum(rng.normal(0, 0.02, t_all))
    load -= load.mean()
    for f in range(f_all):
        k = f % 6
        if k == 1:
            x[:, f] = (rng.random(t_all) < 0.02).astype(float)
        elif k == 2:
            x[:, f] = 0.5 + 0.3 * load + rng.normal(0, 0.01, t_all)
        elif k == 3:
            x[:, f] = np.clip(0.2 + 0.1 * np.sin(2 * np.pi * t / 1440) + rng.normal(0, 0.02, t_all), 0, 1)
        elif k == 4:
            x[:, f] = np.round(5 * rng.random() + np.cumsum(rng.normal(0, 0.01, t_all)), 2)
        elif k == 5:
            x[:, f] = 1e6 * (1 + 0.1 * load) + rng.normal(0, 1e3, t_all)
    for a in range(5):
        s = 5500 + a * 900 + int(rng.integers(0, 300))
        n = int(rng.integers(10, 80))
        ch = int(rng.choice([2, 3, 5, 8, 9, 11]))
        x[s : s + n, ch] += 8 * x[:5000, ch].std() + 0.05
        print(f"anomaly: test readings {s - 5000}..{s + n - 1 - 5000}, channel c{ch}")
    _write(d, [f"c{f}" for f in range(f_all)], x, 60_000)


def plant(d: Path) -> None:
    rng = np.random.default_rng(7)
    t_all, n_act, n_sens = 10000, 4, 12
    act = np.zeros((t_all, n_act))
    for a in range(n_act):
        state, t = 0, 0
        while t < t_all:
            n = int(rng.integers(150, 700))
            act[t : t + n, a] = state
            state = 1 - state if a % 2 else (state + 1) % 3
            t += n
    gain = rng.normal(0, 1, (n_act, n_sens))
    tau = rng.uniform(0.02, 0.2, n_sens)
    sens, lvl = np.zeros((t_all, n_sens)), np.zeros(n_sens)
    for t in range(t_all):
        lvl = lvl + tau * (act[t] @ gain - lvl)
        sens[t] = 10 + lvl + rng.normal(0, 0.05, n_sens)
    names = [f"a{i}" for i in range(n_act)] + [f"s{i}" for i in range(n_sens)]
    _write(d, names, np.column_stack([act, sens]), 1000)


def why(model: Path, test: Path) -> None:
    """Each incident that opened: its rules and the three largest (whitened) errors."""
    from detector.artifacts import load_current
    from detector.core.incidents import rule_names
    from training.calibrate import run_engine
    from training.files import from_csv

    b = load_current(model)
    ser = from_csv([test], b.features)
    r = run_engine(b.module, b.scaler, b.features, ser, b.scoring, collect_from=[0] * len(ser))
    for k in np.flatnonzero(r.opened):
        top = np.argsort(-np.abs(r.errors[k]))[:3]
        print(k, rule_names(int(r.rules[k])), [(b.features[j], round(float(r.errors[k, j]), 1)) for j in top])


if __name__ == "__main__":
    if sys.argv[1] == "gen":
        out = Path(sys.argv[3])
        out.mkdir(parents=True, exist_ok=True)
        {"servers": servers, "plant": plant}[sys.argv[2]](out)
    else:
        why(Path(sys.argv[2]), Path(sys.argv[3]))
