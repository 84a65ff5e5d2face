"""The per-stream statistics row: one definition of what each column holds, and where.

Besides its LSTM state, every stream keeps one float32 row of statistics on the engine's
device (``StateStore.stats``, (N, width)). :class:`StatsRow` names its parts in order: the
order of its fields *is* the layout. A part is ``fixed + per_feature x F`` columns wide: a
scalar column (1 + 0F) reads as a (B,) tensor, a per-feature block (0 + 1F) as (B, F), a
mixed block (k + 1F) as (B, k + F). A part marked ``restart`` is zeroed when the stream's
state restarts (after a gap); the others — the scoring statistics, the ranges seen — stay.
A pair block (``F x F`` columns, a per-stream matrix flattened row-major) reads as (B, F²);
models of more than :data:`MAX_PAIR_FEATURES` features keep none (width 0).

Checkpoints carry :data:`LAYOUT_VERSION`, and a restore refuses a row of another version:
**bump it whenever a part is added, removed, reordered or changes meaning**, even when the
width stays the same.

>>> LAYOUT.width(2)
135
>>> LAYOUT.at("age", 2), LAYOUT.at("repeats", 2)
(4, slice(13, 15, None))
>>> row = LAYOUT.split(torch.zeros(5, LAYOUT.width(2)), 2)
>>> row.age.shape, row.lo.shape
(torch.Size([5]), torch.Size([5, 2]))
>>> LAYOUT.join(row).shape
torch.Size([5, 135])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import Field, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from detector.core.incidents import HOLD_BLOCKS, INCIDENT_COLUMNS

__all__ = [
    "DIFF_SHORT",
    "LAYOUT",
    "LAYOUT_VERSION",
    "LEVEL_AR",
    "LEVEL_BANKS",
    "MAX_PAIR_FEATURES",
    "Part",
    "StatsLayout",
    "StatsRow",
]

# 1: count .. calm, then x_prev .. drift (the first layout checkpoints name; records
# written before the version was recorded hold this one). 2: + incident. 3: + shift_*.
# 4: + drift_n, drift_ms (the sustained rule's own spread). 5: + e_prev (the spike rule).
# 6: + own_n, own_ms (the stream's own spread of its errors). 7: + incident_hold.
# 8: + diff_* (the difference rule). 9: + size_* (each stream at the fleet's size).
# 10: + size_recent (a size outgrown is measured afresh). 11: drift_n, own_n and diff_n
# per feature (each channel's own count: a sparse channel's spread was biased low).
# 12: + level_* (the level rule).
LAYOUT_VERSION = 12
MAX_PAIR_FEATURES = 64  # F^2 floats per stream and pair block up to here; none beyond
DIFF_SHORT = 5  # readings the difference rule keeps per feature (detector.core.difference)
LEVEL_AR = 4  # the level rule's AR(1) state per feature (detector.core.level)
LEVEL_BANKS = 4  # ... and its averages of the innovations per feature (one per span)


@dataclass(frozen=True)
class Part:
    """One named part of the row: ``fixed + per_feature x F`` columns."""

    name: str
    fixed: int
    per_feature: int
    restart: bool
    doc: str
    per_pair: int = 0

    def width(self, features: int) -> int:
        pairs = features * features if features <= MAX_PAIR_FEATURES else 0
        return self.fixed + self.per_feature * features + self.per_pair * pairs

    @property
    def scalar(self) -> bool:
        return (self.fixed, self.per_feature, self.per_pair) == (1, 0, 0)


def scalar(doc: str, *, restart: bool = False) -> dict[str, Any]:
    """The metadata of a :class:`StatsRow` field of one column, (B,)."""
    return {"fixed": 1, "per_feature": 0, "restart": restart, "doc": doc}


def mixed(fixed: int, doc: str, *, restart: bool = False) -> dict[str, Any]:
    """The metadata of a field of ``fixed`` columns, then one per feature, (B, fixed + F)."""
    return {"fixed": fixed, "per_feature": 1, "restart": restart, "doc": doc}


def per_pair(doc: str, *, restart: bool = False) -> dict[str, Any]:
    """The metadata of a field of ``F x F`` columns (a matrix per stream), (B, F²)."""
    return {"fixed": 0, "per_feature": 0, "per_pair": 1, "restart": restart, "doc": doc}


def per_feature(doc: str, *, restart: bool = False, blocks: int = 1) -> dict[str, Any]:
    """The metadata of a :class:`StatsRow` field of ``blocks`` columns per feature,
    (B, blocks x F)."""
    return {"fixed": 0, "per_feature": blocks, "restart": restart, "doc": doc}


@dataclass(frozen=True)
class StatsRow:
    """A wave's statistics rows, by name: (B,) per scalar column, (B, F) per feature block.

    Views of the stored rows after :meth:`StatsLayout.split`; a step builds the next rows
    with ``dataclasses.replace`` and stores them with :meth:`StatsLayout.fold` (or ``join``).
    """

    # The error score's running statistics (detector.core.scoring).
    count: Tensor = field(
        metadata=scalar("readings in the raw error's running statistics (<= window)")
    )
    mean: Tensor = field(metadata=scalar("running mean of the (averaged) raw error"))
    var: Tensor = field(metadata=scalar("running variance of the (averaged) raw error"))
    run: Tensor = field(metadata=scalar("consecutive anomalous readings"))
    age: Tensor = field(metadata=scalar("readings since the state last restarted", restart=True))
    avg: Tensor = field(
        metadata=scalar("short-term average of the raw error (ScoringConfig.average)")
    )
    quiet: Tensor = field(metadata=scalar("readings of the error alerts' cooldown left"))
    range_quiet: Tensor = field(metadata=scalar("readings of new territory's cooldown left"))
    calm: Tensor = field(metadata=scalar("readings since the last anomalous one"))
    # The engine's: what the LSTM was fed last (scaler units).
    x_prev: Tensor = field(
        metadata=per_feature("last fed reading (or its smoothed level), scaler units", restart=True)
    )
    # The flatline rule's (detector.core.rules.FlatlineRule).
    last_obs: Tensor = field(
        metadata=per_feature("last observed value, scaler units", restart=True)
    )
    repeats: Tensor = field(
        metadata=per_feature("exact repeats of last_obs in a row", restart=True)
    )
    # New territory's (RangeRule), raw units: they survive a restart and a refit's scaler.
    lo: Tensor = field(metadata=per_feature("lowest value seen, raw units"))
    hi: Tensor = field(metadata=per_feature("highest value seen, raw units"))
    seen: Tensor = field(metadata=per_feature("values seen"))
    # The sustained rule's (SustainRule).
    drift: Tensor = field(
        metadata=per_feature("average of the signed (whitened) errors", restart=True)
    )
    drift_n: Tensor = field(
        metadata=per_feature("readings in drift_ms, per feature (<= SUSTAIN_MEMORY)")
    )
    drift_ms: Tensor = field(metadata=per_feature("the stream's mean square of its drift"))
    # The stream's incident (detector.core.incidents): it outlives a gap's restart.
    incident: Tensor = field(
        metadata=mixed(INCIDENT_COLUMNS, "open incident: scalars, then peak |error| per feature")
    )
    # The shift rule's (detector.core.shift), scaler units.
    shift_fast: Tensor = field(
        metadata=per_feature("recent level (short EW average)", restart=True)
    )
    shift_slow: Tensor = field(
        metadata=per_feature("reference level (long EW average)", restart=True)
    )
    shift_cov: Tensor = field(
        metadata=per_pair("covariance of recent minus reference level", restart=True)
    )
    shift_taken: Tensor = field(
        metadata=per_feature("values taken since the restart", restart=True)
    )
    # The spike rule's (detector.core.spike.SpikeRule).
    e_prev: Tensor = field(
        metadata=per_feature("the last reading's (whitened) errors, 0 where missing", restart=True)
    )
    # The engine's, with ScoringConfig.own_scale (detector.core.spread).
    own_n: Tensor = field(metadata=per_feature("readings in own_ms, per feature (<= OWN_MEMORY)"))
    own_ms: Tensor = field(
        metadata=per_feature("the stream's mean square of its (whitened) errors")
    )
    # What holds an incident open (detector.core.incidents), scaler units.
    incident_hold: Tensor = field(
        metadata=per_feature(
            "recent level, reference mean, variance and readings, per feature",
            restart=True,
            blocks=HOLD_BLOCKS,
        )
    )
    # The difference rule's (detector.core.difference), scaler units.
    diff_last: Tensor = field(
        metadata=per_feature(
            "the last DIFF_SHORT readings' values, newest first, missing carried forward",
            restart=True,
            blocks=DIFF_SHORT,
        )
    )
    diff_run: Tensor = field(
        metadata=per_feature("readings in a row the channel gave, up to the last", restart=True)
    )
    diff_n: Tensor = field(
        metadata=per_feature("readings in each mean square of diff_ms (<= memory)", blocks=2)
    )
    diff_ms: Tensor = field(
        metadata=per_feature(
            "the stream's mean squares of its one-step and short changes", blocks=2
        )
    )
    # The stream's size (detector.core.sizes), in the units the engine reads values in
    # (after the pseudo-log, before the scaler): they outlive a gap's restart.
    size_level: Tensor = field(metadata=per_feature("mean of the first values"))
    size_prev: Tensor = field(metadata=per_feature("the last value given"))
    size_delta: Tensor = field(metadata=per_feature("the last change between values given"))
    size_step: Tensor = field(
        metadata=per_feature("mean log of the first second differences not 0")
    )
    size_n: Tensor = field(
        metadata=per_feature(
            "values given (to sizes.WATCH), then second differences taken into the size",
            blocks=2,
        )
    )
    size_recent: Tensor = field(
        metadata=per_feature("mean log of the second differences since the size was measured")
    )
    # The level rule's (detector.core.level), scaler units.
    level_ref: Tensor = field(
        metadata=per_feature("reference level (long EW average)", restart=True)
    )
    level_cov: Tensor = field(
        metadata=per_pair("covariance of the reading minus the reference", restart=True)
    )
    level_taken: Tensor = field(
        metadata=per_feature("values taken since the restart", restart=True)
    )
    level_ar: Tensor = field(
        metadata=per_feature(
            "the last conditional level, its AR(1) moments and innovations' mean square",
            restart=True,
            blocks=LEVEL_AR,
        )
    )
    level_bank: Tensor = field(
        metadata=per_feature(
            "EW averages of the whitened innovations, one per span",
            restart=True,
            blocks=LEVEL_BANKS,
        )
    )
    level_own: Tensor = field(
        metadata=per_feature(
            "judged readings, then mean square, of each of level_bank's averages",
            blocks=2 * LEVEL_BANKS,
        )
    )


class StatsLayout:
    """Where each part of :class:`StatsRow` lies in a row of ``width(F)`` columns."""

    def __init__(self) -> None:
        self.parts: tuple[Part, ...] = tuple(_as_part(f) for f in fields(StatsRow))

    def width(self, features: int) -> int:
        """Columns of a row for ``features`` features."""
        return sum(p.width(features) for p in self.parts)

    def at(self, name: str, features: int = 0) -> int | slice:
        """The column of a scalar part, the slice of any other; for indexing rows (N, width)."""
        start = 0
        for p in self.parts:
            w = p.width(features)
            if p.name == name:
                return start if p.scalar else slice(start, start + w)
            start += w
        raise KeyError(f"the statistics row has no part {name!r}: {[p.name for p in self.parts]}")

    def restart_spans(self, features: int) -> list[slice]:
        """Column spans zeroed when a stream's state restarts, adjacent parts merged."""
        return self.spans(features, lambda p: p.restart)

    def spans(self, features: int, which: Callable[[Part], bool]) -> list[slice]:
        """Column spans of the parts ``which`` picks, adjacent parts merged."""
        spans: list[slice] = []
        start = 0
        for p in self.parts:
            end = start + p.width(features)
            if which(p):
                if spans and spans[-1].stop == start:
                    spans[-1] = slice(spans[-1].start, end)
                else:
                    spans.append(slice(start, end))
            start = end
        return spans

    def split(self, rows: Tensor, features: int) -> StatsRow:
        """Named views of ``rows`` (B, width): no copies."""
        if rows.shape[1] != self.width(features):
            raise ValueError(
                f"rows have {rows.shape[1]} columns; the layout for {features} features "
                f"has {self.width(features)}"
            )
        parts = torch.split(rows, [p.width(features) for p in self.parts], dim=1)
        kw = {
            p.name: t.squeeze(1) if p.scalar else t for p, t in zip(self.parts, parts, strict=True)
        }
        return StatsRow(**kw)

    def join(self, row: StatsRow) -> Tensor:
        """The rows (B, width) of named parts, in layout order."""
        # column_stack: the scalar parts become columns inside one call, not one call each
        return torch.column_stack([getattr(row, p.name) for p in self.parts])

    def fold(self, row: StatsRow, base: StatsRow, rows: Tensor) -> Tensor:
        """``rows`` (B, width) holding ``row``: ``base`` is :meth:`split`'s views of ``rows``,
        and only the parts of ``row`` that are not those views are copied in. A wide wave's
        state is mostly parts no rule replaced; a :meth:`join` would copy them all."""
        ptr = rows.untyped_storage().data_ptr()
        changed = []
        for p in self.parts:
            view, t = getattr(base, p.name), getattr(row, p.name)
            if t is view:
                continue
            if t.shape != view.shape:  # copy_ would broadcast where join would refuse
                raise ValueError(
                    f"a statistics part of shape {tuple(t.shape)} for {tuple(view.shape)}"
                )
            # A part that is a view of another part of ``rows`` must be read before any write.
            changed.append((view, t.clone() if t.untyped_storage().data_ptr() == ptr else t))
        for view, t in changed:
            view.copy_(t)
        return rows


def _as_part(f: Field[Any]) -> Part:
    m = f.metadata
    return Part(f.name, m["fixed"], m["per_feature"], m["restart"], m["doc"], m.get("per_pair", 0))


LAYOUT = StatsLayout()
