"""``anomalyd evaluate skab``: detection quality on SKAB, a public multivariate benchmark.

SKAB (the Skoltech Anomaly Benchmark, ``github.com/waico/SKAB``) records a water-pump
testbed: 8 sensors (two vibration RMS, current, pressure, two temperatures, voltage, flow)
once a second, one CSV per experiment (``;``-separated: ``datetime``, the sensors, then
the labels ``anomaly`` and ``changepoint``), each with one labelled anomaly — a valve
closed, a rotor imbalance, water added or drained. Its protocol: each experiment's first
``train_rows`` (400) readings are anomaly-free and the only training data; SKAB's
``anomaly-free`` file, if present, is normal data too.

Here every experiment is one stream. ``anomalyd train``'s defaults fit on the training
parts of all of them (and the anomaly-free file, whole), every experiment is replayed
whole from a cold state through the live engine, and the fleet evaluation's statistical
baseline runs beside it. Reported per detector: incident recall (an incident opening
inside a labelled run or up to ``TOLERANCE_READINGS`` after it) and precision, false
incidents per 10,000 normal readings, and SKAB's own per-reading F1 / FAR / MAR of
"inside an incident" against the ``anomaly`` column. The files split into *dev* and
*test* by a rule fixed before any run of this command: within each folder, in name order,
files alternate dev, test (``split_of``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from detector.errors import InputError
from training.data import StreamSeries
from training.fleet.baseline import Baseline
from training.fleet.evaluate import TOLERANCE_READINGS, replay_engine, train_defaults
from training.fleet.score import Flagged, label_scores

__all__ = ["Experiment", "add_parser", "evaluate_skab", "load_experiment", "split_of"]

TRAIN_ROWS = 400  # SKAB's protocol: each experiment's anomaly-free opening
_LABELS = 2  # trailing label columns: anomaly, changepoint


@dataclass(frozen=True, eq=False)
class Experiment:
    """One SKAB file: its readings (``anomaly`` all False for an anomaly-free file)."""

    stream_id: str
    features: tuple[str, ...]
    ts_ms: npt.NDArray[np.int64]
    values: npt.NDArray[np.float32]
    anomaly: npt.NDArray[np.bool_]
    labelled: bool


@dataclass(frozen=True)
class Label:
    stream_id: str
    kind: str
    start_ms: int
    end_ms: int


def _feature(col: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", col.strip().lower()).strip("_")


def load_experiment(path: Path, stream_id: str) -> Experiment:
    """A SKAB CSV; an :class:`InputError` naming the file and the line for anything else."""
    try:  # utf-8-sig: a file saved by a spreadsheet starts with a byte-order mark
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise InputError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        raise InputError(f"{path}: no readings (a SKAB file has a header and rows)")
    head = lines[0].split(";")
    if head[0].strip().lower() != "datetime" or len(head) < 2:
        raise InputError(f"{path}: not a SKAB file: its header must start 'datetime;'")
    labelled = len(head) > _LABELS + 1 and "anomaly" in head[-_LABELS].lower()
    end = len(head) - _LABELS if labelled else len(head)
    features = tuple(_feature(c) for c in head[1:end])
    if "" in features or len(set(features)) < len(features):
        raise InputError(f"{path}: sensor names {head[1:end]} must be distinct and not empty")
    ts: list[int] = []
    vals: list[list[float]] = []
    anom: list[bool] = []
    for n, line in enumerate(lines[1:], 2):
        cells = line.split(";")
        if len(cells) != len(head):
            raise InputError(f"{path}:{n}: {len(cells)} fields where the header has {len(head)}")
        try:
            t = datetime.strptime(cells[0].strip(), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
            row = [float(c) for c in cells[1:end]]
            anom.append(labelled and float(cells[end]) > 0)
        except ValueError as exc:
            raise InputError(f"{path}:{n}: {exc}") from None
        if any(math.isinf(v) for v in row):
            raise InputError(f"{path}:{n}: an infinite value; a missing one is 'nan'")
        ms = int(t.timestamp() * 1000)
        if ts and ms <= ts[-1]:
            raise InputError(f"{path}:{n}: timestamps must increase ({cells[0].strip()})")
        ts.append(ms)
        vals.append(row)
    return Experiment(
        stream_id,
        features,
        np.array(ts, dtype=np.int64),
        np.array(vals, dtype=np.float32),
        np.array(anom, dtype=bool),
        labelled,
    )


def split_of(paths: list[Path]) -> dict[Path, str]:
    """dev / test per file: within each folder, in name order (numbers as numbers),
    alternating dev, test — a rule fixed before any run."""
    out: dict[Path, str] = {}
    folders: dict[Path, list[Path]] = {}
    for p in paths:
        folders.setdefault(p.parent, []).append(p)
    for files in folders.values():
        key = [(int(p.stem) if p.stem.isdecimal() else 1 << 30, p.name) for p in files]
        for k, (_, p) in enumerate(sorted(zip(key, files, strict=True))):
            out[p] = "dev" if k % 2 == 0 else "test"
    return out


def _runs(mask: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _points(rows: list[Flagged], truth: npt.NDArray[np.bool_]) -> dict[str, float]:
    """SKAB's per-reading F1, false alarm rate and missed alarm rate."""
    pred = np.array([r.incident or r.anomaly for r in rows], dtype=bool)
    tp, fp = int((pred & truth).sum()), int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return {
        "f1": round(2 * p * r / max(p + r, 1e-12), 4),
        "far": round(fp / max(int((~truth).sum()), 1), 4),
        "mar": round(fn / max(int(truth.sum()), 1), 4),
    }


def _score(rows: list[Flagged], exps: list[Experiment], labels: list[Label]) -> dict[str, Any]:
    ids = {e.stream_id for e in exps}
    mine = sorted((r for r in rows if r.stream_id in ids), key=lambda r: (r.stream_id, r.ts_ms))
    truth = np.concatenate([e.anomaly for e in sorted(exps, key=lambda e: e.stream_id)])
    lab = label_scores(mine, [x for x in labels if x.stream_id in ids], TOLERANCE_READINGS * 1000)
    normal = int((~truth).sum())
    return {
        "recall": lab["recall"],
        "precision": lab["precision"],
        "caught": lab["caught"],
        "labels": lab["labels"],
        "incidents": lab["incidents"],
        "false_incidents": lab["false_incidents"],
        "false_per_10k_normal": round(lab["false_incidents"] / max(normal, 1) * 1e4, 2),
        "points": _points(mine, truth),
    }


def evaluate_skab(
    data: Path, out: Path, train_rows: int = TRAIN_ROWS, per_file: bool = False
) -> dict[str, Any]:
    """Train, replay and score every SKAB file under ``data``; writes ``out/report.json``.

    ``per_file``: one model per experiment, fitted on its own opening readings alone (the
    protocol of SKAB's own baselines; the anomaly-free file is not used), and the baseline
    likewise; else one model for all of them."""
    if not data.is_dir():
        raise InputError(f"{data} is not a directory: pass SKAB's data/ folder")
    paths = sorted(p for p in data.rglob("*.csv") if p.is_file())
    if not paths:
        raise InputError(f"no SKAB CSV file under {data}")
    t0 = time.perf_counter()
    exps = [load_experiment(p, p.relative_to(data).with_suffix("").as_posix()) for p in paths]
    feats = exps[0].features
    for e in exps:
        if e.features != feats:
            raise InputError(f"{e.stream_id}: sensors {list(e.features)}, others {list(feats)}")
    # A file with no labelled anomaly (SKAB's anomaly-free one) is normal data, trained on whole.
    scored = {e.stream_id for e in exps if e.anomaly.any()}
    split = split_of([p for p, e in zip(paths, exps, strict=True) if e.stream_id in scored])
    tests = [e for e in exps if e.stream_id in scored]
    if not tests:
        raise InputError(f"no file under {data} has a labelled anomaly to score")
    for e in tests:
        if len(e.ts_ms) <= train_rows:
            raise InputError(
                f"{e.stream_id}: {len(e.ts_ms)} readings, not more than the {train_rows} to "
                "train on (--train-rows)"
            )
        if e.anomaly[:train_rows].any():
            raise InputError(f"{e.stream_id}: an anomaly inside its first {train_rows} readings")
    history = [
        StreamSeries(
            e.stream_id,
            e.ts_ms[: train_rows if e.stream_id in scored else None],
            e.values[: train_rows if e.stream_id in scored else None],
        )
        for e in exps
    ]
    whole = [StreamSeries(e.stream_id, e.ts_ms, e.values) for e in tests]
    if per_file:
        rows = _per_file(history, whole, feats, out)
        model_dir = out / "models"
    else:
        model_dir = train_defaults(history, feats, out, jobs="auto")
        rows = {
            "anomalyd": replay_engine(model_dir, whole),
            "baseline": Baseline().fit(history).replay(whole),
        }
    t1 = time.perf_counter()
    labels = [
        Label(e.stream_id, e.stream_id.split("/")[0], int(e.ts_ms[a]), int(e.ts_ms[b]))
        for e in tests
        for a, b in _runs(e.anomaly)
    ]
    by_split = {
        name: [e for p, e in zip(paths, exps, strict=True) if split.get(p) == name]
        for name in ("dev", "test")
    }
    summary = {
        part: {det: _score(r, chosen, labels) for det, r in rows.items()}
        for part, chosen in (("all", tests), *by_split.items())
        if chosen
    }
    report = {
        # A file with no label is trained on whole by the pooled model; per file, unused.
        "files": {
            e.stream_id: split.get(p, "unused" if per_file else "train")
            for p, e in zip(paths, exps, strict=True)
        },
        "train_rows": train_rows,
        "per_file": per_file,
        "model_dir": str(model_dir),
        "seconds": {
            "load_train_and_replay": round(t1 - t0, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
        "summary": summary,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def _per_file(
    history: list[StreamSeries], whole: list[StreamSeries], feats: tuple[str, ...], out: Path
) -> dict[str, list[Flagged]]:
    """Each experiment by a model (and a baseline) fitted on its own opening readings."""
    first = {h.stream_id: h for h in history}
    rows: dict[str, list[Flagged]] = {"anomalyd": [], "baseline": []}
    for w in whole:
        h = first[w.stream_id]
        model_dir = train_defaults([h], feats, out / "models" / w.stream_id, jobs="auto")
        rows["anomalyd"] += replay_engine(model_dir, [w])
        rows["baseline"] += Baseline().fit([h]).replay([w])
    return rows


def _table(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    head = (
        f"{'files':6} {'detector':9} {'recall':>6} {'prec':>5} {'false':>5} {'F/10k':>6}"
        "  point F1 / FAR / MAR"
    )
    lines = [head, "-" * len(head)]
    for part, dets in summary.items():
        for det, s in dets.items():
            pt = s["points"]
            lines.append(
                f"{part:6} {det:9} {s['recall']:6.2f} {s['precision']:5.2f} "
                f"{s['false_incidents']:5d} {s['false_per_10k_normal']:6.1f}  "
                f"{pt['f1']:.3f} / {pt['far']:.4f} / {pt['mar']:.3f}"
            )
    return "\n".join(lines)


def _cmd_skab(args: argparse.Namespace) -> int:
    report = evaluate_skab(args.data, args.out, args.train_rows, args.per_file)
    if args.json:
        print(json.dumps(report["summary"]))
    else:
        print(_table(report["summary"]))
        print(f"{report['seconds']['total']} s; report: {args.out / 'report.json'}")
    return 0


def add_parser(bench: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``skab`` to ``anomalyd evaluate``'s benchmarks."""
    from detector.arguments import in_range, out_dir

    p = bench.add_parser(
        "skab", help="SKAB, a public multivariate pump benchmark, through the engine"
    )
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="SKAB's data/ folder")
    p.add_argument(
        "--out", type=out_dir, default=Path("out/skab"), metavar="DIR", help="results folder"
    )
    p.add_argument(
        "--train-rows",
        type=in_range(int, 100),
        default=TRAIN_ROWS,
        help="each experiment's opening readings trained on (SKAB's protocol: 400)",
    )
    p.add_argument(
        "--per-file",
        action="store_true",
        help="one model per experiment on its own opening readings (SKAB's baselines' "
        "protocol), not one for all",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_skab)
