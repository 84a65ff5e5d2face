"""History for the trainer: readings grouped into per-stream, time-ordered series.

Every source ends in the same value, :class:`StreamSeries` — one stream's timestamps and
values, ``nan`` where a feature is missing — built by :func:`group_readings` from decoded
:class:`detector.core.schema.Reading` s. Files are decoded by the same code as the live path
(``detector.replay.read_readings`` for CSV/JSONL, ``detector.core.schema.decode_message`` for
Kafka messages), so training sees exactly what a detector would see; bad readings are
skipped and counted, never fatal.

Sources: CSV, Parquet, JSON Lines (data-contract messages), a Kafka topic over a time
range (optionally without the readings that were alerted; read by
:mod:`detector.kafka.reader`, connected as the worker connects), and the synthetic fleet.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import itertools
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from detector.core.schema import BadReading, FeatureSpec, Reading
from detector.core.timefmt import TS_MAX_MS, TS_MIN_MS, parse_ts
from detector.errors import InputError
from detector.replay import read_readings
from detector.sandbox.simulation import Fleet, FleetSpec

__all__ = [
    "META",
    "StreamSeries",
    "data_range",
    "every_stream",
    "folds",
    "from_csv",
    "from_jsonl",
    "from_parquet",
    "from_simulation",
    "group_readings",
    "holdout",
    "infer_features",
    "scaled_padded",
    "spread_sample",
    "stream_key",
    "value_keys",
]

log = logging.getLogger("anomalyd.training")
META = ("ts", "timestamp", "stream_id")  # columns that are no feature
_F32_MAX = float(np.finfo(np.float32).max)  # beyond it, a value is refused as infinite
Admit = Callable[[str], bool]  # whether a stream's readings are kept (training.sample)


def every_stream(stream_id: str) -> bool:
    """The :data:`Admit` that keeps every stream (no sample)."""
    return True


@dataclass(frozen=True, eq=False)
class StreamSeries:
    """One stream's history: ``ts_ms`` (T,) int64 ascending, ``values`` (T, F) float32.

    ``nan`` in ``values`` is a missing feature.
    """

    stream_id: str
    ts_ms: npt.NDArray[np.int64]
    values: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        if self.ts_ms.ndim != 1 or self.values.ndim != 2 or len(self.ts_ms) != len(self.values):
            raise ValueError(
                f"{self.stream_id}: ts_ms must be (T,) and values (T, F), got "
                f"{self.ts_ms.shape} and {self.values.shape}"
            )

    def __len__(self) -> int:
        return len(self.ts_ms)


def group_readings(readings: Iterable[Reading], n_features: int) -> list[StreamSeries]:
    """Group readings by stream (streams in first-seen order), each sorted by ts (stable).

    A reading repeated exactly (its stream, time and values again: two exports that
    overlap, a file given twice, a producer's retry) is kept once: kept twice, every
    other step of the history is no change, and the model and its thresholds learn that
    (a file given twice loosened the error threshold 5.2 -> 7.7 and missed a stuck sensor).
    """
    ts: dict[str, list[int]] = defaultdict(list)
    vals: dict[str, list[tuple[float, ...]]] = defaultdict(list)
    for r in readings:
        ts[r.stream_id].append(r.ts_ms)
        vals[r.stream_id].append(r.values)
    out = []
    repeated = clashing = 0
    for sid, t in ts.items():
        t_arr = np.asarray(t, dtype=np.int64)
        v_arr = np.asarray(vals[sid], dtype=np.float32).reshape(len(t), n_features)
        order = np.lexsort((np.arange(len(t_arr)), t_arr))  # stable: equal ts in arrival order
        t_arr, v_arr = t_arr[order], v_arr[order]
        same_ts = np.concatenate([[False], t_arr[1:] == t_arr[:-1]])
        same_v = np.concatenate(
            [
                [False],
                ((v_arr[1:] == v_arr[:-1]) | np.isnan(v_arr[1:]) & np.isnan(v_arr[:-1])).all(1),
            ]
        )
        repeat = same_ts & same_v
        repeated += int(repeat.sum())
        clashing += int((same_ts & ~same_v).sum())
        out.append(StreamSeries(sid, t_arr[~repeat], v_arr[~repeat]))
    if repeated:
        log.warning(
            "%d readings repeat another of their stream exactly (time and values): each is "
            "kept once (inputs that overlap, or a file given twice?)",
            repeated,
        )
    if clashing:
        log.warning(
            "%d readings share their stream's time with another of other values: both are "
            "kept, in input order",
            clashing,
        )
    return out


def data_range(series: Sequence[StreamSeries]) -> dict[str, Any]:
    """The manifest's ``data_range``: first/last reading (ISO and ms), streams, readings."""
    nonempty = [s for s in series if len(s)]
    if not nonempty:
        return {"streams": 0, "readings": 0}
    lo = min(int(s.ts_ms[0]) for s in nonempty)
    hi = max(int(s.ts_ms[-1]) for s in nonempty)
    iso = [np.datetime_as_string(np.datetime64(v, "ms"), unit="ms") + "Z" for v in (lo, hi)]
    return {
        "start": iso[0],
        "end": iso[1],
        "start_ms": lo,
        "end_ms": hi,
        "streams": len(nonempty),
        "readings": sum(len(s) for s in nonempty),
    }


def _keep(items: Iterable[tuple[int, Reading | BadReading]], where: str) -> Iterable[Reading]:
    bad = unknown = 0
    for _, r in items:
        if isinstance(r, BadReading):
            bad += 1
            unknown += r.reason == "unknown_feature"
            if bad <= 5:
                log.warning("%s: skipping bad reading (%s): %s", where, r.reason, r.detail)
        else:
            yield r
    if bad:
        log.warning("%s: skipped %d bad readings", where, bad)
    if unknown:  # the features were named, or found in the first lines only
        log.warning(
            "%s: %d readings carry a channel that is not among the features: pass --features "
            "with every channel to train on them",
            where,
            unknown,
        )


def infer_features(
    paths: Sequence[Path], sample_lines: int = 1000, fmt: str | None = None
) -> tuple[str, ...]:
    """Feature names from the inputs: CSV/Parquet columns, or JSONL ``values`` keys; ``fmt``
    ("csv", "parquet", "jsonl": ``--source``) says how to read them, else each name does."""
    names: dict[str, None] = {}  # ordered set
    left: dict[str, None] = {}  # columns that are no numbers (where some others are)
    for path in paths:
        suffix = f".{fmt}" if fmt in ("csv", "parquet", "jsonl") else path.suffix.lower()
        if not path.is_file():
            raise InputError(f"{path} {_not_a_file(path)}")
        if suffix == ".csv":
            cols, out = _csv_number_columns(path, sample_lines)
        elif suffix == ".parquet":
            schema = _parquet(path, schema=True)
            cols = [f.name for f in schema if _numeric_type(f.type)]
            out = [f.name for f in schema if f.name not in cols]
        else:
            cols, out = [], []
            with path.open("rb") as f:
                for i, line in enumerate(f):
                    if i >= sample_lines:
                        break
                    cols += value_keys(line.removeprefix(codecs.BOM_UTF8) if i == 0 else line)
        names.update((c, None) for c in cols if c not in META)
        left.update((c, None) for c in out if c not in META)
    if names and left:
        log.warning(
            "columns %s hold no numbers (first %d rows): not features (--features names them)",
            ", ".join(left),
            sample_lines,
        )
    elif left:  # nothing numeric at all: as columns, so that the reading says what is wrong
        names = left
    if not names:
        raise InputError(f"no feature columns found in {[str(p) for p in paths]}; pass --features")
    return tuple(names)


def _csv_number_columns(path: Path, sample_lines: int) -> tuple[list[str], list[str]]:
    """The header's columns with a number in the first ``sample_lines`` rows, and the others
    (text: a site, a firmware version, a note; taken as features, they refused every row)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # as read_readings
            rows = csv.reader(f)
            cols = next(rows, [])
            seen = [False] * len(cols)
            for row in itertools.islice(rows, sample_lines):
                for j, cell in enumerate(row[: len(cols)]):
                    if not seen[j] and cell.strip():
                        seen[j] = _is_number(cell)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: its header is not UTF-8 CSV text ({exc})") from None
    numbers = [c for c, n in zip(cols, seen, strict=True) if n]
    return numbers, [c for c in cols if c not in numbers]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _numeric_type(t: Any) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_decimal(t)
        or pa.types.is_boolean(t)
    )


def _not_a_file(path: Path) -> str:
    return "is a directory, not a file" if path.is_dir() else "does not exist"


def _parquet(path: Path, *, schema: bool = False) -> Any:
    """``path``'s table (or only its schema); an InputError where it is no Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path) if schema else pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None


def value_keys(raw: bytes) -> list[str]:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    out: list[str] = []
    for o in obj if isinstance(obj, list) else [obj]:
        if isinstance(o, dict) and isinstance(o.get("values"), dict):
            out += [str(k) for k in o["values"]]
    return out


def from_csv(
    paths: Sequence[Path], features: Sequence[str], admit: Admit = every_stream
) -> list[StreamSeries]:
    """CSV files: ``ts``/``timestamp``, optional ``stream_id`` (else the file stem), features.
    Readings of streams ``admit`` refuses are not kept (a sample of a large fleet)."""
    return _from_text(paths, features, admit, "csv")


def from_jsonl(
    paths: Sequence[Path], features: Sequence[str], admit: Admit = every_stream
) -> list[StreamSeries]:
    """JSON Lines of data-contract message values (a reading or a batch array per line)."""
    return _from_text(paths, features, admit, "jsonl")


def _from_text(
    paths: Sequence[Path], features: Sequence[str], admit: Admit, fmt: str
) -> list[StreamSeries]:
    spec = FeatureSpec(features)
    rs = [
        r for p in paths for r in _keep(read_readings(p, spec, fmt), str(p)) if admit(r.stream_id)
    ]
    return group_readings(rs, len(spec.names))


def from_parquet(
    paths: Sequence[Path], features: Sequence[str], admit: Admit = every_stream
) -> list[StreamSeries]:
    """Parquet files with the CSV's columns; ``ts`` may be a timestamp, epoch ms or ISO text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out: list[Reading] = []
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path} {_not_a_file(path)}")
        table = _parquet(path)
        cols = table.column_names
        ts_col = "ts" if "ts" in cols else "timestamp" if "timestamp" in cols else None
        if ts_col is None:
            raise InputError(f"{path}: Parquet needs a 'ts' or 'timestamp' column, has {cols}")
        missing = [n for n in features if n not in cols]
        if missing:
            raise InputError(f"{path}: Parquet lacks the feature columns {missing}")
        ts_arr = table.column(ts_col)
        if pa.types.is_timestamp(ts_arr.type):  # within the decoder's 1970-2100, as text is
            ts_list = [
                t if t is None or TS_MIN_MS <= t <= TS_MAX_MS else None
                for t in pc.cast(pc.cast(ts_arr, pa.timestamp("ms")), pa.int64()).to_pylist()
            ]
        else:
            ts_list = [parse_ts(v) for v in ts_arr.to_pylist()]
        n = table.num_rows
        sids = table.column("stream_id").to_pylist() if "stream_id" in cols else [None] * n
        vals = np.stack([_numbers(table, f, path) for f in features], axis=1)  # (N, F)
        bad = 0
        for sid, t, v in zip(sids, ts_list, vals.tolist(), strict=True):
            # inf too (nan is a missing value); a null or empty stream_id is no stream
            if (
                t is None
                or any(abs(x) > _F32_MAX for x in v)
                or sid == ""
                or (sid is None and "stream_id" in cols)
            ):
                bad += 1
                continue
            stream = str(sid) if sid is not None else path.stem
            if admit(stream):
                out.append(Reading(stream, int(t), tuple(v)))
        if bad:
            log.warning(
                "%s: skipped %d rows with a ts that is none or outside 1970-2100, an infinite "
                "value, or no stream_id",
                path,
                bad,
            )
    return group_readings(out, len(features))


def _numbers(table: Any, name: str, path: Path) -> npt.NDArray[np.float64]:
    """Column ``name`` as float64, nulls as nan; an InputError where it holds no numbers."""
    col = table.column(name)
    try:
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{path}: column {name!r} is {col.type}, not numbers") from None


def from_simulation(spec: FleetSpec, ticks: int, start_tick: int = 0) -> list[StreamSeries]:
    """``ticks`` ticks of the synthetic fleet from ``start_tick``, one series per stream."""
    block = Fleet(spec, start_tick=start_tick).step(ticks)
    return [
        StreamSeries(
            sid,
            np.ascontiguousarray(block.ts_ms[:, s]),
            np.ascontiguousarray(block.values[:, s].astype(np.float32)),
        )
        for s, sid in enumerate(block.stream_ids)
    ]


def folds(series: Sequence[StreamSeries], fraction: float, min_streams: int = 8) -> list[list[int]]:
    """The streams split into ``round(1 / fraction)`` calibration folds of about ``fraction``
    each, by a hash of their ids (the choice does not depend on their order); none when
    there are fewer than ``min_streams`` streams.

    >>> few = [StreamSeries(f"s{i}", np.zeros(1, np.int64), np.zeros((1, 1))) for i in range(8)]
    >>> folds(few, 0.25)
    [[5, 6], [1, 7], [0, 2], [3, 4]]
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"the calibration hold-out must be a fraction in [0, 1), got {fraction}")
    n = len(series)
    k = round(1 / fraction) if fraction > 0 else 0
    if n < min_streams or k < 2 or n // k < 1:
        return []
    order = _hash_order(series)
    return [sorted(order[j * n // k : (j + 1) * n // k]) for j in range(k)]


def spread_sample(series: Sequence[StreamSeries], most: int) -> list[int]:
    """Indices of at most ``most`` streams, evenly spaced in the hash order :func:`folds`
    cuts (so every fold lends its share, and the choice does not depend on the streams'
    order); every stream when there are no more.

    >>> few = [StreamSeries(f"s{i}", np.zeros(1, np.int64), np.zeros((1, 1))) for i in range(8)]
    >>> spread_sample(few, 4), spread_sample(few, 8)
    ([2, 4, 6, 7], [0, 1, 2, 3, 4, 5, 6, 7])
    """
    n = len(series)
    if n <= most:
        return list(range(n))
    order = _hash_order(series)
    return sorted(order[j * n // most] for j in range(most))


def stream_key(stream_id: str) -> bytes:
    """The hash streams are ordered by for folds and samples (stable across runs)."""
    return hashlib.blake2b(stream_id.encode(), digest_size=8).digest()


def _hash_order(series: Sequence[StreamSeries]) -> list[int]:
    key = [stream_key(s.stream_id) for s in series]
    return sorted(range(len(series)), key=key.__getitem__)


def holdout(series: Sequence[StreamSeries], fraction: float, min_streams: int = 8) -> list[int]:
    """Indices of the streams held out of the shipped model's fit for calibration: the first
    of :func:`folds`; none when there are fewer than ``min_streams`` streams (calibration
    then uses the fit's held-out tails).

    >>> few = [StreamSeries(f"s{i}", np.zeros(1, np.int64), np.zeros((1, 1))) for i in range(8)]
    >>> holdout(few, 0.25), holdout(few[:7], 0.25)
    ([5, 6], [])
    """
    split = folds(series, fraction, min_streams)
    return split[0] if split else []


def scaled_padded(
    series: Sequence[StreamSeries], mean: Sequence[float], std: Sequence[float]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """(S, T, F) float32 readings scaled as ``(v - mean) / std``, nan-padded past each
    series' end (T the longest), and the lengths (S,): every stream stepped side by side."""
    m, sd = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    lens = np.array([len(s) for s in series], np.int64)
    xs = np.full((len(series), int(lens.max(initial=0)), len(m)), np.nan, np.float32)
    for i, s in enumerate(series):
        xs[i, : len(s)] = (s.values - m) / sd
    return xs, lens
