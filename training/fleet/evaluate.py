"""``anomalyd evaluate fleet``: detection quality on simulated fleets of several styles.

For every style (:data:`training.fleet.styles.STYLES`) and seed of the chosen split:

1. generate the fleet: ``--history`` clean readings per stream, then ``--eval`` readings
   in two versions, clean and with labelled anomalies;
2. train with the shipped defaults of ``anomalyd train``: the history is written as a CSV
   file and the command's own argument parser and pipeline (``training.cli._once``) run
   in-process with only ``--source csv --input FILE --out DIR``;
3. load the published artifact and replay the clean segment and the anomalous one, each
   from a cold state, through :func:`detector.replay.score_stream` (the live engine path);
4. fit the statistical baseline (:mod:`training.fleet.baseline`) on the same history and
   run it over the same two segments;
5. score both by incidents (:mod:`training.fleet.score`) and print them side by side.

**Seeds are split by a fixed rule**: ``dev`` = seeds 1-3, ``test`` = seeds 101-105. Choose
anything (settings, rules, thresholds) by looking at ``dev`` only; ``test`` is reported,
never tuned on. Anomaly sizes are constants of :mod:`training.fleet.styles`.

Incidents come from the engine (``BatchResult.anomalous``: an incident opened here;
``incidents.inside``: the reading lies in an open incident); a model that alerts per reading
(incidents off) goes through :func:`training.fleet.score.incidents_from_flags`, the rule the
baseline also goes through.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detector.artifacts import load_current
from detector.core.engine import Engine
from detector.replay import score_stream
from training import cli as train_cli
from training.data import StreamSeries
from training.fleet.baseline import Baseline, BaselineConfig
from training.fleet.score import (
    COLD_READINGS,
    RESOLVE_AFTER,
    Flagged,
    clean_rates,
    incidents_from_flags,
    label_scores,
)
from training.fleet.styles import KINDS, MIN_EVAL, STYLES, FleetData, generate, to_readings

__all__ = ["SPLITS", "add_parser", "evaluate_fleet", "replay_engine", "train_defaults"]

#: The seed split, fixed here: look at ``dev``, only report ``test``.
SPLITS: dict[str, tuple[int, ...]] = {"dev": (1, 2, 3), "test": (101, 102, 103, 104, 105)}
#: A label is caught by an incident opening up to this many readings after its end.
TOLERANCE_READINGS = 5
DETECTORS = ("anomalyd", "baseline")


def _write_csv(path: Path, series: Sequence[StreamSeries], features: Sequence[str]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ts", "stream_id", *features])
        for s in series:
            for t, row in zip(s.ts_ms.tolist(), s.values.tolist(), strict=True):
                w.writerow([t, s.stream_id, *("" if math.isnan(v) else repr(v) for v in row)])


def train_defaults(
    history: Sequence[StreamSeries], features: Sequence[str], workdir: Path, jobs: int | str = 1
) -> Path:
    """Train on ``history`` exactly as ``anomalyd train`` would; returns the model dir.
    ``jobs`` is ``--jobs``: the processes training may start (a speed setting, not a
    detection one; more than 1 spawns workers, so a calling script needs the
    ``if __name__ == "__main__":`` guard that multiprocessing asks for)."""
    workdir.mkdir(parents=True, exist_ok=True)
    hist = workdir / "history.csv"
    _write_csv(hist, history, features)
    parser = argparse.ArgumentParser(prog="anomalyd")
    train_cli.register(parser.add_subparsers(dest="command"))
    model_dir = workdir / "model"
    argv = ["train", "--source", "csv", "--input", str(hist), "--out", str(model_dir)]
    args = parser.parse_args([*argv, "--jobs", str(jobs)])
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the table / JSON
        train_cli._once(args)
    return model_dir


def replay_engine(model_dir: Path, series: Sequence[StreamSeries]) -> list[Flagged]:
    """Replay ``series`` from a cold state through the live engine; one row per reading."""
    bundle = load_current(model_dir)
    engine = Engine(bundle, max_streams=len(series) + 1, device="auto")
    ids: list[str] = []
    ts: list[int] = []
    opened: list[bool] = []
    inside: list[bool] = []
    for batch, res in score_stream(engine, to_readings(series)):
        ids += [r.stream_id for r in batch]
        ts += [r.ts_ms for r in batch]
        opened += res.anomalous.tolist()
        if res.incidents is not None:
            inside += res.incidents.inside.tolist()
    if bundle.scoring.incidents is not None:
        return list(map(Flagged, ids, ts, opened, inside))
    return _with_incidents(ids, ts, opened)  # a model that alerts per reading


def _with_incidents(ids: list[str], ts: list[int], flags: list[bool]) -> list[Flagged]:
    """Per-reading flags to incidents, stream by stream (the fallback)."""
    rows: dict[str, list[int]] = {}
    for i, sid in enumerate(ids):
        rows.setdefault(sid, []).append(i)
    out: list[Flagged] = []
    for sid, idx in rows.items():
        o, inside = incidents_from_flags([flags[i] for i in idx], RESOLVE_AFTER)
        out += map(Flagged, [sid] * len(idx), [ts[i] for i in idx], o.tolist(), inside.tolist())
    return out


def _score_both(
    fleet: FleetData, rows: dict[str, tuple[list[Flagged], list[Flagged]]]
) -> dict[str, Any]:
    tol = TOLERANCE_READINGS * round(fleet.style.period_s * 1000)
    return {
        name: {
            "anomalous": label_scores(bad, fleet.labels, tol),
            "clean": clean_rates(clean, COLD_READINGS),
        }
        for name, (clean, bad) in rows.items()
    }


def evaluate_one(
    style: str,
    seed: int,
    streams: int,
    history: int,
    evaluation: int,
    workdir: Path,
    jobs: int | str = 1,
) -> dict[str, Any]:
    """Generate, train, replay and score one style and seed; anomalyd and the baseline."""
    t0 = time.perf_counter()
    fleet = generate(style, seed, streams, history, evaluation)
    t1 = time.perf_counter()
    model_dir = train_defaults(fleet.history, fleet.features, workdir, jobs)
    t2 = time.perf_counter()
    engine_rows = (replay_engine(model_dir, fleet.clean), replay_engine(model_dir, fleet.anomalous))
    t3 = time.perf_counter()
    base = Baseline(BaselineConfig()).fit(fleet.history)
    base_rows = (base.replay(fleet.clean), base.replay(fleet.anomalous))
    t4 = time.perf_counter()
    sizes = {k: [lab.size_u for lab in fleet.labels if lab.kind == k] for k in KINDS}
    return {
        "style": style,
        "seed": seed,
        "labels": len(fleet.labels),
        "median_size_u": {k: float(np.median(v)) for k, v in sizes.items() if v},
        "seconds": {
            "generate": round(t1 - t0, 2),
            "train": round(t2 - t1, 2),
            "replay": round(t3 - t2, 2),
            "baseline": round(t4 - t3, 2),
        },
        **_score_both(fleet, {"anomalyd": engine_rows, "baseline": base_rows}),
    }


def _pool(runs: Sequence[dict[str, Any]], name: str) -> dict[str, Any]:
    """One detector's figures pooled over runs (sums of counts, then ratios)."""

    def tot(part: str, key: str, sub: str | None = None) -> int:
        return sum(int((r[name][part][sub] if sub else r[name][part])[key]) for r in runs)

    kinds: dict[str, list[int]] = {}
    for r in runs:
        for k, (c, n) in r[name]["anomalous"]["caught_by_kind"].items():
            kinds.setdefault(k, [0, 0])
            kinds[k][0] += c
            kinds[k][1] += n
    inc = tot("anomalous", "incidents")
    out = {
        "recall": tot("anomalous", "caught") / max(tot("anomalous", "labels"), 1),
        "precision": (inc - tot("anomalous", "false_incidents")) / inc if inc else math.nan,
        "flagged": tot("anomalous", "in_incidents") / max(tot("anomalous", "readings"), 1),
        "recall_by_kind": {k: c / n for k, (c, n) in sorted(kinds.items())},
    }
    for part in ("cold", "warm"):
        n = max(tot("clean", "readings", part), 1)
        out[f"clean_false_per_10k_{part}"] = 1e4 * tot("clean", "false_incidents", part) / n
        out[f"clean_in_incidents_{part}"] = tot("clean", "in_incidents", part) / n
    return out


def _table(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    head = (
        f"{'style':<10} {'detector':<9} {'recall':>6} {'prec':>5} {'flag%':>6} "
        f"{'F/10k c':>8} {'F/10k w':>8} {'in% c':>6} {'in% w':>6}  recall by kind"
    )
    lines = [head, "-" * len(head)]
    for style, by_det in summary.items():
        for det, s in by_det.items():
            kinds = " ".join(f"{k[:5]} {v:.2f}" for k, v in s["recall_by_kind"].items())
            lines.append(
                f"{style:<10} {det:<9} {s['recall']:6.2f} {s['precision']:5.2f} "
                f"{100 * s['flagged']:6.2f} {s['clean_false_per_10k_cold']:8.1f} "
                f"{s['clean_false_per_10k_warm']:8.1f} {100 * s['clean_in_incidents_cold']:6.2f} "
                f"{100 * s['clean_in_incidents_warm']:6.2f}  {kinds}"
            )
    return "\n".join(lines)


def evaluate_fleet(
    styles: Sequence[str], split: str, streams: int, history: int, evaluation: int, out: Path
) -> dict[str, Any]:
    """Every style x seed of ``split``; writes ``out/report.json`` and returns the report."""
    seeds = SPLITS["dev"] + SPLITS["test"] if split == "all" else SPLITS[split]
    started = time.perf_counter()
    runs = []
    for style in styles:
        for seed in seeds:
            print(f"fleet: {style} seed {seed}", file=sys.stderr, flush=True)
            workdir = out / style / f"s{seed}"
            runs.append(evaluate_one(style, seed, streams, history, evaluation, workdir, "auto"))
            (workdir / "run.json").write_text(json.dumps(runs[-1], indent=1))  # kept if stopped
    summary: dict[str, dict[str, dict[str, Any]]] = {
        s: {d: _pool([r for r in runs if r["style"] == s], d) for d in DETECTORS} for s in styles
    }
    if len(styles) > 1:
        summary["all"] = {d: _pool(runs, d) for d in DETECTORS}
    report = {
        "config": {
            "split": split,
            "seeds": list(seeds),
            "styles": list(styles),
            "streams": streams,
            "history": history,
            "eval": evaluation,
            "tolerance_readings": TOLERANCE_READINGS,
            "cold_readings": COLD_READINGS,
            "resolve_after": RESOLVE_AFTER,
            "baseline": vars(BaselineConfig()),
            "training": "anomalyd train defaults (--source csv)",
        },
        "seconds": round(time.perf_counter() - started, 1),
        "summary": summary,
        "runs": runs,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def _cmd_fleet(args: argparse.Namespace) -> int:
    report = evaluate_fleet(
        args.styles, args.split, args.streams, args.history, args.eval, args.out
    )
    if args.json:
        print(json.dumps(report["summary"]))
    else:
        print(_table(report["summary"]))
        print(f"{report['seconds']} s; report: {args.out / 'report.json'}")
    return 0


def add_parser(bench: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fleet`` to ``anomalyd evaluate``'s benchmarks."""
    from detector.arguments import in_range, out_dir

    p = bench.add_parser("fleet", help="simulated fleets of several styles, through the engine")
    p.add_argument(
        "--styles",
        nargs="+",
        choices=list(STYLES),
        default=list(STYLES),
        metavar="STYLE",
        help=f"fleet styles to evaluate, of {', '.join(STYLES)} (default: all)",
    )
    p.add_argument(
        "--split",
        choices=["dev", "test", "all"],
        default="dev",
        help="seeds: dev 1-3 (to look at), test 101-105 (only to report)",
    )
    p.add_argument("--streams", type=in_range(int, 1), default=24, help="streams per fleet")
    p.add_argument(
        "--history",
        type=in_range(int, 1),
        default=2000,
        help="clean readings per stream to train",
    )
    p.add_argument(
        "--eval",
        type=in_range(int, MIN_EVAL),
        default=1500,
        help=f"readings per stream to evaluate (at least {MIN_EVAL}: room for three "
        "anomalies at their longest)",
    )
    p.add_argument(
        "--out", type=out_dir, default=Path("out/fleet"), metavar="DIR", help="results folder"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_fleet)
