"""Decoding alone: readings/s of ``decode_batch`` by message layout, side by side in one run.

    python bench/decode.py --json

The messages are what `bench/e2e.py` publishes (the simulator's fleet, epoch-ms ts): gateway
batches of 100 readings row-wise, the same column-wise (contract v1.1), one reading per
message. Row batches are decoded twice: as shipped (one pass over the batch's columns when
nothing in it is odd, :mod:`detector.core.rowbatch`) and reading by reading (the path every
odd batch takes, and the only one before): the ratio of the two is this machine's gain.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector.core import schema
from detector.core.schema import FeatureSpec, decode_batch
from detector.sandbox.messages import to_json_messages
from detector.sandbox.simulation import Fleet, FleetSpec


def _records(layout: str, per_message: int, streams: int, ticks: int) -> list[Any]:
    fleet = Fleet(FleetSpec(streams=streams, seed=3))
    msgs = [
        m
        for block in fleet.blocks(ticks)
        for m in to_json_messages(block, per_message, ts_format="ms", layout=layout)  # type: ignore[arg-type]
    ]
    return [
        SimpleNamespace(topic="t", partition=0, offset=i, key=k, value=v)
        for i, (k, v) in enumerate(msgs)
    ]


def _rate(records: list[Any], spec: FeatureSpec, poll: int, repeat: int) -> float:
    """Best of ``repeat`` passes, readings/s, decoding polls of ``poll`` records."""
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = 0
        for i in range(0, len(records), poll):
            n += len(decode_batch(records[i : i + poll], spec))
        best = max(best, n / (time.perf_counter() - t0))
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=2000)
    ap.add_argument("--ticks", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    spec = FeatureSpec(FleetSpec().features)
    rows = _records("rows", 100, args.streams, args.ticks)
    out: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(),
        "readings": args.streams * args.ticks,
        "rows_batch100": _rate(rows, spec, 2000, args.repeat),
    }
    ns = vars(schema)  # the decoder's own name for the one-pass path, switched off a while
    one_pass = ns["fast_rows"]
    ns["fast_rows"] = lambda *a: None
    try:
        out["rows_batch100_reading_by_reading"] = _rate(rows, spec, 2000, args.repeat)
    finally:
        ns["fast_rows"] = one_pass
    cols = _records("columnar", 100, args.streams, args.ticks)
    out["columnar_batch100"] = _rate(cols, spec, 2000, args.repeat)
    single = _records("rows", 1, args.streams, args.ticks // 4)
    out["single"] = _rate(single, spec, 500, args.repeat)
    out["rows_one_pass_gain"] = out["rows_batch100"] / out["rows_batch100_reading_by_reading"]
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for k, v in out.items():
            print(f"{k:36s} {v:,.2f}" if isinstance(v, float) else f"{k:36s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
