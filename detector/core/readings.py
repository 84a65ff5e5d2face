"""What the decoder takes and gives: feature spec, readings, refused readings, batch columns.

The value types of the data contract (v1, and v1.1's columnar messages) that
:mod:`detector.core.schema` decodes against. They live apart from the decoder so that the
decoder module can re-export them without an import cycle:
``from detector.core.schema import Reading`` keeps working.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, overload

import numpy as np

from detector.core.alerts import Origin

__all__ = [
    "REASONS",
    "BadReading",
    "Columns",
    "DecodedBatch",
    "FeatureSpec",
    "Reading",
    "ReadingOrigins",
    "Refused",
    "SourceRecord",
]

#: Every reason a reading can be refused for. Stable: they are metric labels and DLQ headers.
REASONS: tuple[str, ...] = (
    "oversized",
    "not_json",
    "not_object",
    "empty_batch",
    "batch_too_large",
    "missing_stream_id",
    "bad_stream_id",
    "missing_ts",
    "bad_ts",
    "missing_values",
    "bad_values",
    "unknown_feature",
    "wrong_feature_count",
    "non_numeric_value",
    "non_finite_value",
)


class Reading(NamedTuple):
    """One sensor reading. A NamedTuple, not a dataclass: it is built per reading in the hot path.

    ``values`` are in the model's feature order, ``nan`` where missing.
    """

    stream_id: str
    ts_ms: int
    values: tuple[float, ...]


class BadReading(NamedTuple):
    """A refused reading: ``reason`` is one of :data:`REASONS`, ``detail`` says what to fix.

    ``raw`` is the offending JSON (the whole message, or the batch element number ``item``).
    """

    reason: str
    detail: str
    raw: bytes
    item: int | None = None


@dataclass(frozen=True, slots=True)
class Columns:
    """The readings of one columnar message (v1.1): one stream, N readings as columns.

    ``ts`` is (N,) int64 epoch ms; ``values`` is (N, F) float64 in the model's feature
    order, ``nan`` where missing. Not a tuple, so the decoder can tell it from its others.
    """

    stream_id: str
    ts: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    def readings(self) -> list[Reading]:
        """The same readings one by one, in message order."""
        sid = self.stream_id
        return [
            Reading(sid, t, tuple(v))
            for t, v in zip(self.ts.tolist(), self.values.tolist(), strict=True)
        ]


class FeatureSpec:
    """The feature names a model expects, in order, with limits on what a message may carry.

    Examples
    --------
    >>> spec = FeatureSpec(("temp", "vibration"))
    >>> spec.names, spec.index["vibration"], spec.max_batch
    (('temp', 'vibration'), 1, 10000)
    """

    __slots__ = ("index", "max_batch", "max_bytes", "names")

    def __init__(
        self, names: Sequence[str], max_bytes: int = 1_000_000, max_batch: int = 10_000
    ) -> None:
        if not names:
            raise ValueError("a model needs at least one feature name")
        if len(set(names)) != len(names):
            raise ValueError(f"feature names must be unique, got {list(names)}")
        self.names: tuple[str, ...] = tuple(names)
        self.index: dict[str, int] = {n: i for i, n in enumerate(self.names)}
        self.max_bytes = max_bytes
        self.max_batch = max_batch


class SourceRecord(Protocol):
    """A consumed message as :func:`~detector.core.schema.decode_batch` needs it.

    Any Kafka client's record fits.
    """

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


class Refused(NamedTuple):
    """A bad reading with where it came from and its message key: a dead letter's content."""

    bad: BadReading
    origin: Origin
    key: bytes | None


class ReadingOrigins(Sequence[Origin]):
    """Every reading's :class:`Origin` in a decoded batch, held as columns.

    An object per reading cost a sixth of a gateway batch's decoding (docs/benchmarks.md);
    here each source message's ``(topic, partition, offset)`` is kept once in ``messages``,
    and per reading only ``message`` (B,), the index of its message, and ``position`` (B,),
    its index in that message (-1: a message of one reading). ``origins[i]`` builds the
    one :class:`Origin` asked for (an alert's id needs it).

    >>> o = ReadingOrigins([("t", 0, 7), ("t", 1, 9)], np.array([0, 0, 1]), np.array([0, 1, -1]))
    >>> o[1], o.partitions().tolist(), len(o.select(np.array([2])))
    (Origin(topic='t', partition=0, offset=7, index=1), [0, 0, 1], 1)
    """

    __slots__ = ("message", "messages", "position")

    def __init__(
        self, messages: list[tuple[str, int, int]], message: np.ndarray, position: np.ndarray
    ) -> None:
        if len(message) != len(position):
            raise ValueError(f"{len(message)} message numbers for {len(position)} positions")
        self.messages = messages
        self.message = np.asarray(message, np.int64)  # (B,)
        self.position = np.asarray(position, np.int64)  # (B,)

    def __len__(self) -> int:
        return len(self.position)

    @overload
    def __getitem__(self, i: int) -> Origin: ...
    @overload
    def __getitem__(self, i: slice) -> ReadingOrigins: ...
    def __getitem__(self, i: int | slice) -> Origin | ReadingOrigins:
        if isinstance(i, slice):
            return ReadingOrigins(self.messages, self.message[i], self.position[i])
        topic, partition, offset = self.messages[int(self.message[i])]
        return Origin(topic, partition, offset, int(self.position[i]))

    def __iter__(self) -> Iterator[Origin]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        # Equal to the list of the same origins (what decoding returned before), nothing else.
        if not isinstance(other, ReadingOrigins | list | tuple):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable arrays, like a list

    def __repr__(self) -> str:
        return f"ReadingOrigins({list(self)!r})"

    def partitions(self) -> np.ndarray:
        """(B,) int64: each reading's source partition."""
        by_message = np.fromiter((p for _, p, _ in self.messages), np.int64, len(self.messages))
        return by_message[self.message]

    def offsets(self) -> np.ndarray:
        """(B,) int64: each reading's source offset."""
        by_message = np.fromiter((o for _, _, o in self.messages), np.int64, len(self.messages))
        return by_message[self.message]

    def select(self, idx: np.ndarray | Sequence[int]) -> ReadingOrigins:
        """The origins at ``idx`` (positions), in that order. Not a mask: bools are refused."""
        at = np.asarray(idx)
        if at.dtype == np.bool_:  # cast to positions, a mask would pick readings 0 and 1
            raise TypeError("select takes positions, not a boolean mask (use np.flatnonzero)")
        at = at.astype(np.int64, copy=False)
        return ReadingOrigins(self.messages, self.message[at], self.position[at])


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """The readings of a batch of messages as columns, in message order; the refused apart.

    ``stream_ids`` and ``origins`` have B entries; ``ts`` is (B,) int64 epoch ms; ``values``
    is (B, F) float64 in the model's feature order, ``nan`` where missing (exactly the
    numbers sent; the engine takes them as float32). ``origins[i].index`` is the reading's
    position in a batch or columnar message, -1 for a message of one reading.
    """

    stream_ids: list[str]
    ts: np.ndarray
    values: np.ndarray
    origins: ReadingOrigins
    refused: list[Refused]

    def __len__(self) -> int:
        return len(self.stream_ids)

    def select(self, keep: Sequence[bool]) -> DecodedBatch:
        """The readings where ``keep`` is true (B entries); the refused ones stay."""
        idx = [i for i, k in enumerate(keep) if k]
        return DecodedBatch(
            [self.stream_ids[i] for i in idx],
            self.ts[idx],
            self.values[idx],
            self.origins.select(idx),
            self.refused,
        )
