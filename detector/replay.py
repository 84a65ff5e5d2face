"""Offline scoring through the live engine: files of readings in, one scored line per reading.

Inputs:

- JSON Lines: each line is a message value per the data contract (a reading or a batch
  array), decoded by the same decoder as Kafka messages;
- CSV: a header with ``ts`` (or ``timestamp``), optionally ``stream_id``, and one column per
  model feature; empty cells (or ``NA``, ``N/A``, ``NULL``) are missing values. Without a
  ``stream_id`` column the file's stem is the stream.

Each file's readings are scored in time order (as the trainer reads a history; a file out
of order says so in a warning, readings of one time keep their file order) in batches
through :class:`detector.core.engine.Engine`, with event time as the engine's clock, so a
replay is deterministic.
"""

from __future__ import annotations

import codecs
import csv
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import orjson

from detector.core.engine import BatchResult, Engine
from detector.core.incidents import rule_names
from detector.core.schema import BadReading, FeatureSpec, Reading, decode_message
from detector.core.timefmt import iso_ms, parse_ts
from detector.errors import InputError

__all__ = ["Y2000_MS", "ReplaySummary", "read_readings", "replay", "score_stream"]


@dataclass(frozen=True)
class ReplaySummary:
    readings: int
    bad: int
    anomalies: int


log = logging.getLogger("anomalyd.replay")
_F32_MAX = float(np.finfo(np.float32).max)
_MAX_STREAM_ID = 256  # as the data contract's decoder (detector.core.schema)
_MISSING = frozenset({"NA", "N/A", "NULL"})  # R's and SQL exports' empty cells
Y2000_MS = 946_684_800_000  # before it, epoch ms are more likely epoch seconds


def _csv_rows(path: Path, spec: FeatureSpec) -> Iterator[tuple[int, Reading | BadReading]]:
    """The rows of a CSV file of readings; an :class:`InputError` naming the file (and the
    line) where it is no CSV text at all, a :class:`BadReading` for each row that is wrong."""
    lineno = 0  # the last line read whole
    try:
        # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first name
        with path.open(newline="", encoding="utf-8-sig") as f:
            rd = csv.DictReader(f)
            cols = list(rd.fieldnames or [])
            lineno = 1
            names = _csv_columns(path, cols, spec)
            for lineno, row in enumerate(rd, start=2):
                yield lineno, _csv_row(row, lineno, names, cols, path.stem)
    except UnicodeDecodeError:
        after = f" after line {lineno}" if lineno else ""
        raise InputError(f"{path}: not UTF-8 text{after}; save it as UTF-8") from None
    except csv.Error as exc:
        raise InputError(f"{path}:{lineno + 1}: not readable as CSV ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror})") from None


def _csv_columns(path: Path, cols: list[str], spec: FeatureSpec) -> list[str]:
    """The columns of the model's features in ``cols`` (the header), else an InputError."""
    if "ts" not in cols and "timestamp" not in cols:
        raise InputError(f"{path}: CSV needs a 'ts' or 'timestamp' column, has {cols}")
    used = {"ts", "timestamp", "stream_id", "value", *spec.names}
    if twice := sorted({c for c in cols if c in used and cols.count(c) > 1}):  # last wins
        raise InputError(f"{path}: the header names {twice} more than once; name each once")
    missing = [n for n in spec.names if n not in cols]
    if missing and not (len(spec.names) == 1 and "value" in cols):
        raise InputError(f"{path}: CSV lacks the model's feature columns {missing}, has {cols}")
    return list(spec.names) if not missing else ["value"]  # univariate NAB-style files


def _csv_row(
    row: dict[str | None, object], lineno: int, names: list[str], cols: list[str], stem: str
) -> Reading | BadReading:
    """One CSV row as a reading, or why it is refused (the decoder's reasons and limits)."""
    raw = orjson.dumps(row, option=orjson.OPT_NON_STR_KEYS)
    if None in row:  # DictReader files the cells beyond the header under None
        extra = row[None]
        fields = len(cols) + (len(extra) if isinstance(extra, list) else 1)
        return BadReading(
            "wrong_feature_count",
            f"line {lineno}: {fields} fields, the header has {len(cols)}",
            raw,
        )
    ts_col = "ts" if "ts" in cols else "timestamp"
    used = [ts_col, *names, *(["stream_id"] if "stream_id" in cols else [])]
    if any(row.get(c) is None for c in used):  # a short row: cells it lacks are no readings
        given = sum(v is not None for v in row.values())
        return BadReading(
            "wrong_feature_count", f"line {lineno}: {given} fields, the header has {len(cols)}", raw
        )
    ts_cell = str(row.get(ts_col) or "")
    # epoch ms written from a float column ("1795255200000.0"): a spreadsheet's or pandas'
    whole, dot, frac = ts_cell.partition(".")
    ts = parse_ts(whole if dot and whole.isdigit() and (frac.isdigit() or not frac) else ts_cell)
    if ts is None:
        return BadReading(
            "bad_ts",
            f"line {lineno}: {ts_cell!r} is not ISO-8601 or epoch milliseconds 1970-2100",
            raw,
        )
    sid = str(row["stream_id"]) if "stream_id" in cols else stem
    if not sid or len(sid) > _MAX_STREAM_ID:  # an empty cell is no stream (the decoder's rule)
        return BadReading(
            "bad_stream_id",
            f"line {lineno}: stream_id must be 1 to {_MAX_STREAM_ID} characters, is {len(sid)}",
            raw,
        )
    vals: list[float] = []
    for n in names:
        cell = str(row.get(n) or "").strip()
        try:
            v = float(cell) if cell and cell.upper() not in _MISSING else math.nan
        except ValueError:
            return BadReading("non_numeric_value", f"line {lineno}: {n}={cell!r}", raw)
        if math.isinf(v) or abs(v) > _F32_MAX:
            return BadReading("non_finite_value", f"line {lineno}: {n}={cell!r}", raw)
        vals.append(v)
    return Reading(sid, ts, tuple(vals))


def read_readings(
    path: Path, spec: FeatureSpec, fmt: str | None = None
) -> Iterator[tuple[int, Reading | BadReading]]:
    """(line number, reading or bad reading) from a CSV or JSON Lines file, in file order;
    ``fmt`` ("csv" or "jsonl") says which, else the name does (CSV when it ends in .csv)."""
    if not path.is_file():
        raise InputError(f"{path} {_not_a_file(path)}: pass CSV or JSON Lines files of readings")
    if fmt == "csv" or (fmt is None and path.suffix.lower() == ".csv"):
        yield from _csv_rows(path, spec)
        return
    try:
        f = path.open("rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror})") from None
    with f:
        for lineno, line in enumerate(f, start=1):
            if lineno == 1:
                line = line.removeprefix(codecs.BOM_UTF8)
            if line.strip():
                for r in decode_message(line, None, spec):
                    yield lineno, r


def _not_a_file(path: Path) -> str:
    return "is a directory, not a file" if path.is_dir() else "does not exist"


def score_stream(
    engine: Engine, readings: Iterable[Reading], batch_size: int = 4096
) -> Iterator[tuple[list[Reading], BatchResult]]:
    """Score readings in order, ``batch_size`` at a time; event time drives the engine's clock."""
    batch: list[Reading] = []

    def run() -> tuple[list[Reading], BatchResult]:
        ids = [r.stream_id for r in batch]
        ts = np.fromiter((r.ts_ms for r in batch), np.int64, len(batch))
        vals = np.array([r.values for r in batch], dtype=np.float32)
        return batch, engine.process(ids, ts, vals, now_ms=int(ts.max()))

    for r in readings:
        batch.append(r)
        if len(batch) >= batch_size:
            yield run()
            batch = []
    if batch:
        yield run()


def _steps_back(readings: list[Reading]) -> int:
    """How many readings are older than their stream's previous one."""
    last: dict[str, int] = {}
    back = 0
    for r in readings:
        back += r.ts_ms < last.get(r.stream_id, r.ts_ms)
        last[r.stream_id] = r.ts_ms
    return back


def _read_file(
    path: Path, spec: FeatureSpec, bad_out: IO[bytes] | None
) -> tuple[list[Reading], int]:
    """A file's readings and how many were bad (each written to ``bad_out``); an
    InputError when none could be read (a run that scored nothing is no success)."""
    good: list[Reading] = []
    first: BadReading | None = None
    bad = 0
    for lineno, r in read_readings(path, spec):
        if isinstance(r, BadReading):
            bad += 1
            first = first or r
            if bad_out is not None:
                doc = {"file": str(path), "line": lineno, "reason": r.reason, "detail": r.detail}
                bad_out.write(orjson.dumps(doc) + b"\n")
        else:
            good.append(r)
    if first is not None and not good:
        hint = ""
        if first.reason == "not_json" and path.suffix.lower() != ".csv":
            hint = "; a CSV file is read as CSV when its name ends in .csv"
        raise InputError(
            f"{path}: none of its {bad} readings could be read (the first: {first.reason}, "
            f"{first.detail}){hint}"
        )
    if not good:
        raise InputError(f"{path} holds no readings: nothing to replay")
    last: dict[str, int] = {}
    for r in good:
        last[r.stream_id] = max(last.get(r.stream_id, r.ts_ms), r.ts_ms)
    if early := [sid for sid, t in last.items() if t < Y2000_MS]:  # as the trainer says it
        log.warning(
            "%s: %d of its %d streams are dated before 2000 (%s): anomalyd reads numbers "
            "as epoch milliseconds; if these are seconds, multiply them by 1000",
            path,
            len(early),
            len(last),
            ", ".join(early[:3]) + (", ..." if len(early) > 3 else ""),
        )
    return good, bad


def replay(
    engine: Engine, inputs: Iterable[Path], out: IO[bytes], bad_out: IO[bytes] | None = None
) -> ReplaySummary:
    """Score every reading of ``inputs``; write one JSON line per reading to ``out``."""
    spec = FeatureSpec(engine.bundle.features)
    n = bad = anomalies = evicted = 0
    newest: dict[str, int] = {}  # each stream's newest time in the files replayed so far
    for path in inputs:
        good, n_bad = _read_file(path, spec, bad_out)
        bad += n_bad
        if back := _steps_back(good):  # each read as a jump: an incident on every one
            log.warning(
                "%s: %d readings older than their stream's previous one: replayed in time order",
                path,
                back,
            )
            ts = np.fromiter((r.ts_ms for r in good), np.int64, len(good))
            good = [good[i] for i in np.argsort(ts, kind="stable")]
        # Files are replayed in the order given, each sorted alone (holding every file's
        # readings to sort them together would cost memory a long replay may not have).
        # Sorted, a stream's readings here only count against its earlier files' newest.
        late = 0
        for r in good:
            was = newest.get(r.stream_id, r.ts_ms)
            late += r.ts_ms < was
            newest[r.stream_id] = max(was, r.ts_ms)
        if late:
            log.warning(
                "%s: %d readings older than their stream's newest in an earlier file: "
                "replayed after those, they may open incidents; give the files in time order "
                "(and each once)",
                path,
                late,
            )
        for batch, res in score_stream(engine, good):
            inside = res.anomalous if res.incidents is None else res.incidents.inside
            for i, r in enumerate(batch):
                flag = bool(res.anomalous[i])
                anomalies += flag
                rules = rule_names(int(res.rules[i]))
                row = {
                    "stream_id": r.stream_id,
                    "ts": iso_ms(r.ts_ms),
                    "score": round(float(res.score[i]), 4),
                    "likelihood": round(float(res.likelihood[i]), 6),
                    "anomaly": flag,  # an incident opened at this reading (an alert)
                    "incident": bool(inside[i]),  # the reading lies in an open incident
                    "rule": rules[0] if rules else None,  # what flagged the reading, if any
                }
                out.write(orjson.dumps(row) + b"\n")
            n += len(batch)
            evicted += len(res.evicted)
    if evicted:  # each came back cold: nothing of it judged until its warm-up passed again
        log.warning(
            "%d times a stream's state was evicted to make room (engine.max_streams=%d): "
            "those streams started again from cold",
            evicted,
            engine.store.max_streams,
        )
    return ReplaySummary(n, bad, anomalies)
