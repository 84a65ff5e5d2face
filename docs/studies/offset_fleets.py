# docs/quality.md, session 42: a channel that sits far from zero and moves little against its
# level (a pressure in Pa, a temperature in kelvin, a mains frequency): a probe, not a score
# to tune on. A style's channel 0 raised, in every stream alike, by K times its spread over
# the fleet's history (its moves, the anomalies' sizes included, unchanged in raw units).
# Shipped defaults; seed 901 (neither dev nor test).
# Usage: PYTHONPATH=.:docs/studies .venv/bin/python docs/studies/offset_fleets.py OUT STYLE SEED K [STREAMS]
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmark_channels import train_and_score  # docs/studies/, the script's own folder
from training.data import StreamSeries
from training.fleet.styles import generate


def raised(series, offsets):
    out = []
    for s in series:
        v = s.values.astype(np.float64)
        v[:, 0] += offsets[s.stream_id]
        out.append(StreamSeries(s.stream_id, s.ts_ms, v.astype(np.float32)))
    return out


if __name__ == "__main__":
    out, style, seed, k = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    streams = int(sys.argv[5]) if len(sys.argv) > 5 else 12
    fl = generate(style, seed, streams, 2000, 1500)
    spread = float(np.nanstd(np.concatenate([s.values[:, 0] for s in fl.history])))
    offsets = {s.stream_id: k * spread for s in fl.history}
    fl = replace(
        fl,
        history=raised(fl.history, offsets),
        clean=raised(fl.clean, offsets),
        anomalous=raised(fl.anomalous, offsets),
    )
    train_and_score(fl, out / f"{style}_s{seed}_off{k:g}", f"{style}+off{k:g}")
