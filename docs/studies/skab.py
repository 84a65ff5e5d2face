# docs/quality.md, session 20: anomalyd on SKAB (Skoltech Anomaly Benchmark, waico/SKAB on
# GitHub: a water-pump testbed, 8 sensors at 1 s), a public multivariate benchmark of the
# kind the product is judged on, with the shipped defaults and nothing chosen on it.
# Usage (files as SKAB ships them: `datetime;<8 sensors>;anomaly;changepoint`, `;`-separated):
#   PYTHONPATH=. .venv/bin/python docs/studies/skab.py SKAB_CSV_DIR OUT [TRAIN_ROWS]
# Each file is one stream. SKAB's own protocol: the first TRAIN_ROWS (400) rows of every
# file are its anomaly-free training part. `anomalyd train` (defaults) on those of all
# files, then every file replayed whole from a cold state through the live engine; the
# statistical baseline of `anomalyd evaluate fleet` side by side. Reported: incident recall
# (an incident opening in [start, end + 5 rows] of an anomaly run) and precision, false
# incidents on normal rows, and SKAB's point-wise F1 / FAR / MAR of "reading inside an
# incident" against the `anomaly` column.
import json
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from training.data import StreamSeries
from training.fleet.baseline import Baseline, BaselineConfig
from training.fleet.evaluate import replay_engine, train_defaults
from training.fleet.score import label_scores


@dataclass(frozen=True)
class Label:
    stream_id: str
    kind: str
    start_ms: int
    end_ms: int


def _name(col: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", col.strip().lower()).strip("_")


def load(path: Path):
    lines = path.read_text().splitlines()
    head = lines[0].split(";")
    rows = [ln.split(";") for ln in lines[1:] if ln.strip()]
    ts = np.array([int(datetime.strptime(r[0], "%Y-%m-%d %H:%M:%S")
                       .replace(tzinfo=timezone.utc).timestamp() * 1000) for r in rows])
    feats = [_name(c) for c in head[1:-2]]
    vals = np.array([[float(v) for v in r[1:-2]] for r in rows], dtype=np.float32)
    anom = np.array([float(r[-2]) > 0 for r in rows])
    return ts, feats, vals, anom


def runs(mask):
    idx = np.flatnonzero(np.diff(np.r_[0, mask.astype(int), 0]))
    return list(zip(idx[::2], idx[1::2] - 1))


def point_scores(rows, truth):
    pred = np.array([r.incident or r.anomaly for r in rows])
    tp = int((pred & truth).sum()); fp = int((pred & ~truth).sum()); fn = int((~pred & truth).sum())
    p = tp / max(tp + fp, 1); r = tp / max(tp + fn, 1)
    return {"f1": round(2 * p * r / max(p + r, 1e-12), 3), "far": round(fp / max((~truth).sum(), 1), 4),
            "mar": round(fn / max(truth.sum(), 1), 3)}


def main(src: Path, out: Path, train_rows: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    history, whole, labels, truth, feats = [], [], [], {}, None
    for path in sorted(src.glob("*.csv")):
        ts, f, vals, anom = load(path)
        feats = feats or f
        assert f == feats, (path, f)
        sid = path.stem
        if anom[:train_rows].any():
            print(f"{sid}: anomaly inside the first {train_rows} rows; file left out", flush=True)
            continue
        history.append(StreamSeries(sid, ts[:train_rows], vals[:train_rows]))
        whole.append(StreamSeries(sid, ts, vals))
        truth[sid] = anom
        for a, b in runs(anom):
            labels.append(Label(sid, sid.split("_")[0], int(ts[a]), int(ts[b])))
    fleet = type("Skab", (), {"history": history, "features": tuple(feats)})()
    model = train_defaults(history, feats, out, jobs=2)
    eng = replay_engine(model, whole)
    base = Baseline(BaselineConfig()).fit(history).replay(whole)
    report = {}
    for name, rows in (("anomalyd", eng), ("baseline", base)):
        by = {}
        for r in rows:
            by.setdefault(r.stream_id, []).append(r)
        lab = label_scores(rows, labels, tolerance_ms=5000)
        # false incidents on normal rows: incidents that overlap no anomaly run
        pts = {sid: point_scores(sorted(by[sid], key=lambda r: r.ts_ms), truth[sid]) for sid in by}
        allp = point_scores([r for sid in sorted(by) for r in sorted(by[sid], key=lambda r: r.ts_ms)],
                            np.concatenate([truth[sid] for sid in sorted(by)]))
        normal = sum(int((~truth[s]).sum()) for s in truth)
        report[name] = {"recall": lab["recall"], "precision": lab["precision"],
                        "caught": lab["caught"], "labels": lab["labels"],
                        "incidents": lab["incidents"], "false_incidents": lab["false_incidents"],
                        "false_per_10k_normal": round(lab["false_incidents"] / normal * 1e4, 1),
                        "points": allp, "points_by_file": pts}
        print(name, json.dumps({k: v for k, v in report[name].items() if k != "points_by_file"}), flush=True)
    (out / "skab.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 400)
