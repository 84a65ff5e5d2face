# docs/quality.md, session 22: fleets unlike the six styles (a probe for floods, not a score
# to tune on): sine cycle with coloured noise on 40 streams (the issue's own description of
# an independent fleet), 16 channels, a short history, few streams; 48 channels (session 23);
# session 41: faster and slower cycles, redder noise, faster drift, ragged cadence, strong coupling.
# Shipped defaults.
# Usage: PYTHONPATH=. .venv/bin/python docs/studies/probe_fleets.py OUT SEED [NAME..]
import sys
from pathlib import Path

from fleet_seeds import run_or_read  # docs/studies/, the script's own folder
from training.fleet.evaluate import DETECTORS, _pool, _table
from training.fleet.signal import Style
from training.fleet.styles import STYLES

PROBES = {  # name: (style, streams, history)
    "cycar1": (Style("cycar1", 6, noise="ar1"), 40, 2000),
    "wide": (Style("wide", 16, cycle_readings=480, noise="ar1", quantised=0.25, nan=0.01), 16, 2000),
    "short": (Style("short", 4), 24, 600),
    "few": (Style("few", 4, cycle="square", cycle_readings=120), 4, 2000),
    # session 23: as many channels as public multivariate benchmarks have (SMD 38, MSL 55)
    "wide48": (Style("wide48", 48, cycle_readings=480, noise="ar1", quantised=0.25), 8, 2000),
    # session 41: the independent fleet's dimensions pushed past the six styles' values
    "fastcyc": (Style("fastcyc", 5, cycle_readings=60, smooth=(0.0, 0.3)), 12, 2000),
    "weekly": (Style("weekly", 4, cycle_readings=10080), 12, 2000),  # a cycle 5x the history
    "red": (Style("red", 6, cycle="none", noise="ar1", noise_phi=(0.97, 0.995)), 12, 2000),
    "drifting": (Style("drifting", 4, wander=12.0, wander_readings=(800, 2000)), 12, 2000),
    "ragged": (Style("ragged", 4, jitter=0.45, drop=0.15, nan=0.1), 12, 2000),
    "coupled": (Style("coupled", 8, gain=(8.0, 20.0), lag=10), 12, 2000),
}

if __name__ == "__main__":  # --jobs auto spawns workers, which import this file
    out, seed = Path(sys.argv[1]), int(sys.argv[2])
    runs = []
    for name in sys.argv[3:] or list(PROBES):
        style, streams, history = PROBES[name]
        STYLES[name] = style
        runs.append(run_or_read(out, name, seed, streams, history))
        summary = {r["style"]: {d: _pool([r], d) for d in DETECTORS} for r in runs}
        print(_table(summary), flush=True)
