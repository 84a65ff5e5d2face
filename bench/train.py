"""Training time: `anomalyd train` on one fleet with ``--jobs 1`` and ``--jobs N``, one run.

    python bench/train.py --json                 # 12 streams x 2,000 readings, ~10 minutes
    python bench/train.py --streams 8 --history 600 --json      # a quick look

The fleet is a simulated style's clean history (`training.fleet.styles.generate`), trained
as `anomalyd train` trains it (`training.fleet.evaluate.train_defaults`: the CLI's
defaults, in-process).
Both runs train the same data with the same seed, so the published scoring must be the
same: the JSON says whether it was (``same_scoring``) beside the two wall times and their
ratio. The fits run one after the other either way; what ``--jobs`` spreads over the
cores is the calibration's replays (docs/training.md, "Training time").
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from detector.arguments import processes
from detector.artifacts import load_current
from detector.supervisor import worker_count
from training.fleet.evaluate import train_defaults
from training.fleet.styles import FleetData, generate


def _train(fleet: FleetData, jobs: int) -> tuple[float, Any]:
    with tempfile.TemporaryDirectory(prefix="anomalyd-bench-train-") as tmp:
        t0 = time.perf_counter()
        model_dir = train_defaults(fleet.history, fleet.features, Path(tmp), jobs)
        seconds = time.perf_counter() - t0
        return seconds, load_current(model_dir).scoring


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--style", default="coloured")
    ap.add_argument("--seed", type=int, default=1, help="a dev seed (docs/quality.md)")
    ap.add_argument("--streams", type=int, default=12)
    ap.add_argument("--history", type=int, default=2000, help="readings per stream")
    ap.add_argument("--jobs", type=processes, default="auto", help="second run: N or auto")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    jobs = worker_count(args.jobs)
    fleet = generate(args.style, args.seed, args.streams, args.history, 900)  # (labels need room)
    serial, one = _train(fleet, 1)
    side, many = _train(fleet, jobs)
    out: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "style": args.style,
        "streams": args.streams,
        "readings": args.streams * args.history,
        "jobs": jobs,
        "seconds_jobs_1": round(serial, 1),
        "seconds_jobs_n": round(side, 1),
        "speedup": round(serial / side, 3),
        "same_scoring": one == many,
    }
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for k, v in out.items():
            print(f"{k:16s} {v}")
    return 0 if out["same_scoring"] else 1


if __name__ == "__main__":
    sys.exit(main())
