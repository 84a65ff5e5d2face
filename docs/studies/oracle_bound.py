# docs/quality.md, session 37: how many of a style's labels could ANY detector catch at
# issue 12's false-alarm bar? An oracle that knows the simulator: each channel's load term
# and wander are subtracted exactly (no detector knows them), what is left is the channel's
# own noise (white, or AR(1) with its known coefficient) plus the anomaly, before
# quantisation, with no missing readings. On its innovations (unit variance) a generalised
# likelihood ratio for a step or a ramp that began 0..W-1 readings ago, or that began so and
# ended at this reading (a pulse; a ramp that drops back), largest over the four shapes and
# the stream's channels; the step at offset 0 is a one-reading jump (a spike's onset).
# Its threshold: the least value at which the clean readings (history and clean evaluation
# segment) open at most BUDGET incidents per 10,000 (runs of flags, ended by 10 unflagged
# readings as the engine's incidents). A label counts as caught when the statistic
# reaches it within [start, end + 5] of the anomalous segment.
# Usage: [STREAMS=24] PYTHONPATH=. .venv/bin/python docs/studies/oracle_bound.py \
#     STYLE SEED[,SEED..] [W] [BUDGET]
# (STREAMS as `anomalyd evaluate fleet --streams`: a fleet of 12 is not the first 12 of 24.)
import os
import sys
from collections import Counter

import numpy as np

from training.fleet.signal import clean_signal, make_params, make_rng, step_unit
from training.fleet.styles import STYLES, _inject, _windows

RESOLVE, LATE = 10, 5  # readings that end an incident; a label's grace after its end


def innovations(e: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """(T, F) unit-variance innovations of AR(1) (phi 0: white) paths ``e`` (T, F)."""
    out = e.copy()
    out[1:] = e[1:] - phi * e[:-1]
    return out / np.sqrt(1 - phi**2)


def glr(eta: np.ndarray, phi: np.ndarray, w: int) -> np.ndarray:
    """(T,) the largest over channels, offsets 0..w-1 and {step, ramp} of |GLR|."""
    t_n, _ = eta.shape
    a = 1 - phi  # (F,) what a step or a ramp leaves in each later innovation
    c = np.vstack([np.zeros((1, eta.shape[1])), np.cumsum(eta, axis=0)])  # c[i] = sum eta[:i]
    i = np.arange(t_n)[:, None]
    k = np.vstack([np.zeros((1, eta.shape[1])), np.cumsum(i * eta, axis=0)])
    best = np.zeros(t_n)
    t = np.arange(t_n)
    for j in range(w):
        lo = t - j  # first reading of the shape
        ok = lo >= 0
        lo_c = np.clip(lo, 0, None)
        whole = c[t + 1] - c[lo_c]  # sum eta[lo..t]
        # step: 1 at lo, a after
        s = eta[lo_c] + a * (whole - eta[lo_c])
        stat = s**2 / (1 + j * a**2)
        # ramp: 1 + a k at lo + k
        kk = (k[t + 1] - k[lo_c]) - lo_c[:, None] * whole
        r = whole + a * kk
        den = sum((1 + a * q) ** 2 for q in range(j + 1))
        stat = np.maximum(stat, r**2 / den)
        if j >= 1:  # the same shapes over lo..t-1, ended at t: a pulse, a ramp that drops
            body = c[t] - c[lo_c]  # sum eta[lo..t-1]
            pulse = eta[lo_c] + a * (body - eta[lo_c]) - phi * eta
            stat = np.maximum(stat, pulse**2 / (1 + (j - 1) * a**2 + phi**2))
            kb = (k[t] - k[lo_c]) - lo_c[:, None] * body
            drop = body + a * kb - phi * j * eta
            den_b = sum((1 + a * q) ** 2 for q in range(j)) + (phi * j) ** 2
            stat = np.maximum(stat, drop**2 / den_b)
        best = np.where(ok, np.maximum(best, stat.max(axis=1)), best)
    return np.sqrt(best)


def incidents(flag: np.ndarray) -> list[tuple[int, int]]:
    """Runs of flags, an incident ending after RESOLVE unflagged readings."""
    out, start, last = [], None, -RESOLVE - 1
    for i in np.flatnonzero(flag).tolist():
        if start is None or i - last > RESOLVE:
            if start is not None:
                out.append((start, last))
            start = i
        last = i
    if start is not None:
        out.append((start, last))
    return out


def fleet(style: str, seed: int, w: int, streams: int = 24, hist: int = 2000, ev: int = 1500):
    st = STYLES[style]
    p = make_params(st, make_rng(seed, st, 0), streams)
    n = hist + ev
    x, term, _ = clean_signal(st, p, make_rng(seed, st, 1), n)
    unit = step_unit(x[:hist])
    bad = x.copy()
    arng = make_rng(seed, st, 3)
    windows = _windows(st, p, arng, ev)
    for win in windows:
        _inject(bad[hist:], win, term[hist:], unit, st, p, arng)
    t = np.arange(n)[:, None, None]
    wander = st.wander * np.sin(2 * np.pi * t / p.wander_period + p.wander_phase)
    clean_stat, bad_stat = [], []
    for s in range(streams):
        for sig, out in ((x, clean_stat), (bad, bad_stat)):
            e = (sig[:, s] - p.base[s]) / p.sigma[s] - term[:, s] - wander[:, s]
            out.append(glr(innovations(e, p.noise_phi[s]), p.noise_phi[s], w))
    return windows, np.array(clean_stat), np.array(bad_stat), hist


def threshold(clean: list[np.ndarray], budget: float) -> float:
    readings = sum(c.size for c in clean)
    allowed = budget * readings / 10_000
    lo, hi = 0.0, max(float(c.max()) for c in clean) + 1e-9
    for _ in range(40):
        mid = (lo + hi) / 2
        opened = sum(len(incidents(c >= mid)) for c in clean)
        lo, hi = (mid, hi) if opened > allowed else (lo, mid)
    return hi


def main() -> None:
    style, seeds = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
    w = int(sys.argv[3]) if len(sys.argv) > 3 else 120
    budget = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0
    streams = int(os.environ.get("STREAMS", "24"))
    runs = [fleet(style, seed, w, streams) for seed in seeds]
    clean = [c for _, cs, _, _ in runs for c in cs]
    thr = threshold(clean, budget)
    caught, total, peak = Counter(), Counter(), {}
    for windows, _, bs, hist in runs:
        for win in windows:
            seg = bs[win.stream][hist + win.start : hist + win.end + LATE + 1]
            total[win.kind] += 1
            caught[win.kind] += int(seg.max() >= thr)
            peak.setdefault(win.kind, []).append(float(seg.max()))
    kinds = sorted(total)
    print(f"{style} seeds {seeds} W={w} budget {budget}/10k: threshold {thr:.2f}")
    print("  caught: " + " ".join(f"{k} {caught[k]}/{total[k]}" for k in kinds))
    print(
        f"  recall {sum(caught.values()) / sum(total.values()):.2f}; median peak by kind: "
        + " ".join(f"{k} {np.median(peak[k]):.1f}" for k in kinds)
    )


if __name__ == "__main__":
    main()
