# docs/quality.md, session 41: fleets with many missing cells (a probe for floods, not a score
# to tune on). A style with a share of its cells missing at random (`nan`: 10, 30, 60 %), or
# with one channel that reports only every K-th reading (a slower sensor merged into the
# stream's records: `slowK`, the other channels complete). Labels' onsets always carry their
# value (as in every style). Shipped defaults; seed 901 (neither dev nor test).
# Usage: PYTHONPATH=.:docs/studies .venv/bin/python docs/studies/sparse_fleets.py OUT STYLE SEED VARIANT [STREAMS]
#   VARIANT: nan10 | nan30 | nan60 | slow10 | slow30
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmark_channels import train_and_score  # docs/studies/, the script's own folder
from training.data import StreamSeries
from training.fleet.styles import STYLES, generate


def slow(series, k, channel, keep_at):
    """``channel`` of each stream present only every k-th reading (and at labels' onsets)."""
    out = []
    for s in series:
        v = s.values.astype(np.float64).copy()
        mask = np.arange(len(v)) % k != 0
        mask[[i for i in keep_at.get(s.stream_id, ()) if i < len(v)]] = False
        v[mask, channel] = np.nan
        out.append(StreamSeries(s.stream_id, s.ts_ms, v.astype(np.float32)))
    return out


if __name__ == "__main__":
    out, style, seed, variant = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    streams = int(sys.argv[5]) if len(sys.argv) > 5 else 12
    if variant.startswith("nan"):
        st = replace(STYLES[style], nan=int(variant[3:]) / 100)
        fl = generate(st, seed, streams, 2000, 1500)
    else:
        k = int(variant[4:])
        fl = generate(style, seed, streams, 2000, 1500)
        onsets: dict[str, list[int]] = {}
        for s in fl.anomalous:
            for lab in fl.labels:
                if lab.stream_id == s.stream_id:
                    onsets.setdefault(s.stream_id, []).extend(
                        np.flatnonzero((s.ts_ms >= lab.start_ms) & (s.ts_ms <= lab.end_ms)).tolist())
        fl = replace(fl, history=slow(fl.history, k, 0, {}), clean=slow(fl.clean, k, 0, {}),
                     anomalous=slow(fl.anomalous, k, 0, onsets))
    train_and_score(fl, out / f"{style}_s{seed}_{variant}", f"{style}+{variant}")
