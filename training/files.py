"""History files for the trainer: CSV, JSON Lines and Parquet, each read into per-stream
series by the same rules as the live decoder (:func:`detector.replay.read_readings` for
text; Parquet columns checked against the data contract's limits). Bad readings are
skipped and counted, never fatal."""

from __future__ import annotations

import codecs
import csv
import itertools
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from detector.core.schema import BadReading, FeatureSpec, Reading
from detector.core.timefmt import TS_MAX_MS, TS_MIN_MS, parse_ts
from detector.errors import InputError
from detector.replay import read_readings
from training.data import META, Admit, StreamSeries, every_stream, group_readings, value_keys

__all__ = ["from_csv", "from_jsonl", "from_parquet", "from_text", "infer_features"]

log = logging.getLogger("anomalyd.training")
_F32_MAX = float(np.finfo(np.float32).max)  # beyond it, a value is refused as infinite


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


def from_csv(
    paths: Sequence[Path], features: Sequence[str], admit: Admit = every_stream
) -> list[StreamSeries]:
    """CSV files: ``ts``/``timestamp``, optional ``stream_id`` (else the file stem), features.
    Readings of streams ``admit`` refuses are not kept (a sample of a large fleet)."""
    return from_text(paths, features, admit, "csv")


def from_jsonl(
    paths: Sequence[Path], features: Sequence[str], admit: Admit = every_stream
) -> list[StreamSeries]:
    """JSON Lines of data-contract message values (a reading or a batch array per line)."""
    return from_text(paths, features, admit, "jsonl")


def from_text(
    paths: Sequence[Path], features: Sequence[str], admit: Admit, fmt: str | None
) -> list[StreamSeries]:
    """CSV or JSON Lines files, as ``fmt`` says, or each by its name when None."""
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
