"""The binary encoding of state checkpoints: versioned, self-describing, never pickle.

A value is ``magic | kind | header length | header | payload``:

- ``magic`` ``b"ADS1"`` (format 1), ``kind`` 1 = a stream's state, 2 = a partition mark;
- ``header``: JSON (orjson). A stream's: the model name/version (for people), the state
  *shape* (layers, hidden, stat width, the statistics row's layout version and a digest of
  features, layers, hidden, calendar periods and stat width — what decides whether a model
  may reuse the state: see :func:`restorable`), the source
  topic/partition, the offset the state reflects (every reading of the partition below it
  is applied) and the stream's last event time. A mark's: topic, partition, offset;
- ``payload`` (streams only): float32 little-endian ``h`` (L, H), ``c`` (L, H), ``stats`` (S).

Keys: ``b"s:" + stream id`` for a stream, ``b"p:<topic>:<partition>"`` for a mark, so a
stream id can never collide with a mark. float32 round-trips exactly: a restored stream
continues bit for bit where it stopped.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from detector.core.bundle import ModelBundle
from detector.core.state import StreamSnapshot
from detector.core.statsrow import LAYOUT_VERSION
from detector.errors import AnomalydError

__all__ = [
    "CheckpointError",
    "PartitionMark",
    "StateShape",
    "StreamState",
    "decode",
    "encode_mark",
    "encode_streams",
    "mark_key",
    "restorable",
    "stream_key",
]

MAGIC = b"ADS1"
STREAM, MARK = 1, 2
_HEAD = struct.Struct("<4sBH")  # magic, kind, header length
_F32 = np.dtype("<f4")
# Records written before the header named the statistics layout hold layout 1.
_UNVERSIONED_LAYOUT = 1
log = logging.getLogger("anomalyd.checkpoint")


class CheckpointError(AnomalydError):
    """A checkpoint record cannot be read (not ours, another format, truncated)."""


@dataclass(frozen=True)
class StateShape:
    """What a state vector means; two models may share state only when these are equal.

    ``layout`` is the statistics row's :data:`~detector.core.statsrow.LAYOUT_VERSION`: a
    row of another layout is refused even at the same width (its columns mean other things).

    >>> StateShape(1, 4, 5, "x").width
    13
    """

    layers: int
    hidden: int
    stat_width: int
    digest: str
    layout: int = LAYOUT_VERSION

    @classmethod
    def of(cls, bundle: ModelBundle, stat_width: int, layout: int = LAYOUT_VERSION) -> StateShape:
        """The shape of ``bundle``'s state in a store keeping ``stat_width`` statistics."""
        cfg = bundle.module.config
        # The digest leaves the layout out (it is compared on its own), so records written
        # before the layout was named still restore under layout 1.
        key = [list(bundle.features), cfg.layers, cfg.hidden, list(cfg.periods_s), stat_width]
        if bundle.scoring.context:  # (left out when none: older records keep their digest)
            key.append(list(bundle.scoring.context))  # as Bundle.state_compatible
        if bundle.scoring.held:  # (the same)
            key.append({"held": list(bundle.scoring.held)})
        if bundle.scoring.reads_pseudo_log:
            key.append({"pseudo_log": list(bundle.scoring.pseudo_log)})
        if any(bundle.scoring.sizes):  # a stream's size is measured against the fleet's
            key.append({"sizes": list(bundle.scoring.sizes)})
        what = orjson.dumps(key)
        digest = hashlib.blake2b(what, digest_size=8).hexdigest()
        return cls(cfg.layers, cfg.hidden, stat_width, digest, layout)

    @property
    def width(self) -> int:
        """float32 values per stream: h and c (L, H) each, then the statistics."""
        return 2 * self.layers * self.hidden + self.stat_width


@dataclass(frozen=True)
class StreamState:
    """One stream's decoded record. ``vector`` is (width,) float32: h, c row-major, stats."""

    stream_id: str
    topic: str
    partition: int
    offset: int
    last_ts: int
    model: str
    version: int
    shape: StateShape
    vector: np.ndarray
    last_seen: int = -1  # processing time last seen (ms); -1: a record from before it


@dataclass(frozen=True)
class PartitionMark:
    """Every reading of ``topic``/``partition`` below ``offset`` is in the durable state."""

    topic: str
    partition: int
    offset: int


def stream_key(stream_id: str) -> bytes:
    return b"s:" + stream_id.encode()


def mark_key(topic: str, partition: int) -> bytes:
    return f"p:{topic}:{partition}".encode()


def _frame(kind: int, header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = orjson.dumps(header)
    return _HEAD.pack(MAGIC, kind, len(head)) + head + payload


def encode_mark(mark: PartitionMark) -> bytes:
    return _frame(MARK, {"topic": mark.topic, "partition": mark.partition, "offset": mark.offset})


def encode_streams(
    shape: StateShape,
    model: str,
    version: int,
    topic: str,
    snap: StreamSnapshot,
    partitions: list[int],
    offsets: list[int],
) -> list[bytes]:
    """One record per stream of ``snap`` (h, c (L, N, H), stats (N, S)); vectorised."""
    n = len(snap.stream_ids)
    h = snap.h.permute(1, 0, 2).reshape(n, -1)  # (N, L*H)
    c = snap.c.permute(1, 0, 2).reshape(n, -1)
    rows = np.concatenate([h.numpy(), c.numpy(), snap.stats.numpy()], axis=1).astype(_F32)
    if rows.shape[1] != shape.width:
        raise ValueError(f"state rows have {rows.shape[1]} values, shape says {shape.width}")
    base = {
        "model": model,
        "version": version,
        "layers": shape.layers,
        "hidden": shape.hidden,
        "stat_width": shape.stat_width,
        "layout": shape.layout,
        "shape": shape.digest,
        "topic": topic,
    }
    seen = snap.last_seen.tolist() if snap.last_seen is not None else [-1] * n
    return [
        _frame(
            STREAM,
            base | {"stream": sid, "partition": p, "offset": o, "last_ts": int(t), "seen": s},
            rows[i].tobytes(),
        )
        for i, (sid, p, o, t, s) in enumerate(
            zip(snap.stream_ids, partitions, offsets, snap.last_ts.tolist(), seen, strict=True)
        )
    ]


def decode(value: bytes) -> StreamState | PartitionMark:
    """A record back, or CheckpointError saying why it is not one of ours."""
    if len(value) < _HEAD.size:
        raise CheckpointError(f"{len(value)} bytes: too short for a checkpoint record")
    magic, kind, hlen = _HEAD.unpack_from(value)
    if magic != MAGIC:
        raise CheckpointError(
            f"magic {magic!r} is not {MAGIC!r}: not a checkpoint of this "
            "format (another writer on the state topic?)"
        )
    end = _HEAD.size + hlen
    try:
        h = orjson.loads(value[_HEAD.size : end])
        if kind == MARK:
            if len(value) != end:
                raise CheckpointError("a partition mark carries no payload")
            return PartitionMark(_s(h, "topic"), _i(h, "partition"), _i(h, "offset"))
        if kind != STREAM:
            raise CheckpointError(f"unknown record kind {kind}")
        layout = _i(h, "layout") if "layout" in h else _UNVERSIONED_LAYOUT
        shape = StateShape(
            _i(h, "layers"), _i(h, "hidden"), _i(h, "stat_width"), _s(h, "shape"), layout
        )
        payload = value[end:]
        if len(payload) != shape.width * 4:
            raise CheckpointError(
                f"payload of {len(payload)} bytes, the header's shape needs {shape.width * 4}"
            )
        vec = np.frombuffer(payload, dtype=_F32).astype(np.float32)
        if not np.isfinite(vec).all():
            raise CheckpointError("state holds non-finite values")
        return StreamState(
            _s(h, "stream"),
            _s(h, "topic"),
            _i(h, "partition"),
            _i(h, "offset"),
            _i(h, "last_ts"),
            _s(h, "model"),
            _i(h, "version"),
            shape,
            vec,
            _i(h, "seen") if "seen" in h else -1,
        )
    except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
        raise CheckpointError(f"unreadable header: {exc}") from None


def restorable(states: list[StreamState], expected: StateShape) -> list[StreamState]:
    """The records a state of shape ``expected`` may restore, in order.

    The others are refused (their streams start afresh); records of another statistics
    layout are named in a warning, as their shape may otherwise look the same.
    """
    ok = [st for st in states if st.shape == expected]
    found = Counter(st.shape.layout for st in states if st.shape.layout != expected.layout)
    for layout, n in sorted(found.items()):
        log.warning(
            "refusing %d stream state records of statistics layout %d: this version reads "
            "layout %d (LAYOUT_VERSION); those streams start afresh",
            n,
            layout,
            expected.layout,
        )
    return ok


def _i(h: dict[str, Any], k: str) -> int:
    v = h[k]
    if type(v) is not int:
        raise CheckpointError(f"header field {k!r} must be an integer, got {v!r}")
    return v


def _s(h: dict[str, Any], k: str) -> str:
    v = h[k]
    if not isinstance(v, str):
        raise CheckpointError(f"header field {k!r} must be a string, got {v!r}")
    return v
