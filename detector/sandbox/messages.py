"""A simulated fleet as the data contract's messages, and its ground-truth labels as files."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Literal

import numpy as np
import orjson

from detector.core.schema import Reading
from detector.core.timefmt import iso_ms, parse_ts
from detector.sandbox.simulation import Anomaly, Block, Fleet

__all__ = ["iter_readings", "read_labels", "to_json_messages", "write_labels"]


def to_json_messages(
    block: Block,
    batch_size: int = 1,
    *,
    ts_format: Literal["iso", "ms"] = "iso",
    layout: Literal["rows", "columnar"] = "rows",
) -> list[tuple[bytes | None, bytes]]:
    """Encode a block as data-contract messages ``(key, value)``, key = stream id.

    With ``batch_size > 1`` a message is a JSON array of up to ``batch_size`` consecutive
    readings of one stream, so Kafka's per-key partitioning keeps each stream in order.
    ``layout="columnar"`` sends those readings column-wise instead (contract v1.1: ``ts``
    an array, ``values`` an object of arrays), even when ``batch_size`` is 1.
    ``ts`` is ISO-8601 UTC with milliseconds (``ts_format="iso"``) or epoch milliseconds.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if layout == "columnar":
        return _columnar_messages(block, batch_size, ts_format)
    if ts_format == "iso":
        ts: list[list[str]] | list[list[int]] = np.datetime_as_string(
            block.ts_ms.astype("datetime64[ms]"), unit="ms", timezone="UTC"
        ).tolist()
    else:
        ts = block.ts_ms.tolist()
    values, names, ids = block.values.tolist(), block.features, block.stream_ids
    keys = [sid.encode() for sid in ids]

    def reading(t: int, s: int) -> dict[str, object]:
        return {
            "stream_id": ids[s],
            "ts": ts[t][s],
            "values": dict(zip(names, values[t][s], strict=True)),
        }

    n_ticks = len(values)
    if batch_size == 1:
        return [
            (keys[s], orjson.dumps(reading(t, s))) for t in range(n_ticks) for s in range(len(ids))
        ]
    out: list[tuple[bytes | None, bytes]] = []
    for c0 in range(0, n_ticks, batch_size):
        rows = range(c0, min(c0 + batch_size, n_ticks))
        out.extend((keys[s], orjson.dumps([reading(t, s) for t in rows])) for s in range(len(ids)))
    return out


def _columnar_messages(
    block: Block, batch_size: int, ts_format: Literal["iso", "ms"]
) -> list[tuple[bytes | None, bytes]]:
    """One message per stream and ``batch_size`` consecutive ticks, column-wise."""
    by_stream = np.ascontiguousarray(block.ts_ms.T)  # (S, T)
    ts: list[list[str]] | list[list[int]]
    if ts_format == "iso":
        ts = np.datetime_as_string(
            by_stream.astype("datetime64[ms]"), unit="ms", timezone="UTC"
        ).tolist()
    else:
        ts = by_stream.tolist()
    cols = block.values.transpose(1, 2, 0).tolist()  # (S, F, T)
    names, n_ticks = block.features, len(block.ts_ms)
    out: list[tuple[bytes | None, bytes]] = []
    for c0 in range(0, n_ticks, batch_size):
        c1 = min(c0 + batch_size, n_ticks)
        for s, sid in enumerate(block.stream_ids):
            doc = {
                "stream_id": sid,
                "ts": ts[s][c0:c1],
                "values": {name: col[c0:c1] for name, col in zip(names, cols[s], strict=True)},
            }
            out.append((sid.encode(), orjson.dumps(doc)))
    return out


def _label_ms(text: str) -> int:
    ms = parse_ts(text)
    if ms is None:
        raise ValueError(f"label time {text!r} is not ISO-8601 or epoch milliseconds")
    return ms


def write_labels(path: str | os.PathLike[str], anomalies: Iterable[Anomaly]) -> None:
    """Write ground-truth labels as JSON Lines (``start_ts``/``end_ts`` ISO, both inclusive)."""
    lines = [
        orjson.dumps(
            {
                "stream_id": a.stream_id,
                "kind": a.kind,
                "start_ts": iso_ms(a.start_ms),
                "end_ts": iso_ms(a.end_ms),
                "features": list(a.features),
            }
        )
        + b"\n"
        for a in anomalies
    ]
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "wb") as fh:
        fh.writelines(lines)
    os.replace(tmp, path)  # readers never see a half-written file


def read_labels(path: str | os.PathLike[str]) -> list[Anomaly]:
    """Read labels written by `write_labels`."""
    with open(path, "rb") as fh:
        rows = [orjson.loads(line) for line in fh if line.strip()]
    return [
        Anomaly(
            r["stream_id"],
            r["kind"],
            _label_ms(r["start_ts"]),
            _label_ms(r["end_ts"]),
            tuple(r["features"]),
        )
        for r in rows
    ]


def iter_readings(fleet: Fleet, ticks: int, block_ticks: int = 256) -> Iterator[Reading]:
    """The next ``ticks`` ticks of ``fleet`` one reading at a time, in time order."""
    for block in fleet.blocks(ticks, block_ticks):
        ids, ts, values = block.stream_ids, block.ts_ms.tolist(), block.values.tolist()
        for ts_row, v_row in zip(ts, values, strict=True):
            for sid, t, v in zip(ids, ts_row, v_row, strict=True):
                yield Reading(sid, t, tuple(v))
