"""Incident-level scoring of a replay against labelled anomalies, and false alarms on clean data.

An operator is paged per incident, so everything here counts incidents, not readings:

- **recall per kind**: a label is caught when an incident of its stream *opens* in
  ``[start_ms, end_ms + tolerance_ms]``; an incident already open before the anomaly does
  not catch it (nobody is paged for it);
- **precision**: incidents that open inside a label's window (with the same tolerance) or
  are open when a label starts, over all incidents opened;
- on clean data, **false incidents per 10,000 readings** and the **share of readings inside
  incidents**, separately for each stream's first ``cold`` readings (the replay starts from
  a cold state) and the rest.

Input is one :class:`Flagged` per reading: ``anomaly`` = an incident opened here,
``incident`` = the reading lies inside an open incident. A detector that only flags
readings goes through :func:`incidents_from_flags` first, the engine's incident rule.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from detector.core.incidents import IncidentConfig

__all__ = [
    "COLD_READINGS",
    "RESOLVE_AFTER",
    "Flagged",
    "Incident",
    "LabelLike",
    "clean_rates",
    "incidents",
    "incidents_from_flags",
    "label_scores",
]

Bools = npt.NDArray[np.bool_]
#: Readings of a stream counted as its cold start.
COLD_READINGS = 1000
#: Normal readings in a row that resolve an incident: the engine's default, so the
#: baseline's incidents are grouped as the engine's are.
RESOLVE_AFTER = IncidentConfig().resolve_after


class Flagged(NamedTuple):
    """One replayed reading: did an incident open here, is the reading inside one."""

    stream_id: str
    ts_ms: int
    anomaly: bool
    incident: bool


class LabelLike(Protocol):
    """What scoring reads of a label (:class:`training.fleet.styles.Label` has it)."""

    @property
    def stream_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def start_ms(self) -> int: ...
    @property
    def end_ms(self) -> int: ...


@dataclass(frozen=True)
class Incident:
    """An incident: the reading that opened it and the last reading inside it."""

    stream_id: str
    start_ms: int
    end_ms: int


def incidents_from_flags(flags: npt.ArrayLike, resolve_after: int) -> tuple[Bools, Bools]:
    """(opened, inside) per reading of one stream from per-reading anomaly flags.

    The engine's rule: a flagged reading opens an incident when none is open; it stays
    open until ``resolve_after`` normal readings in a row, the resolving reading included.
    Flagged runs fewer than ``resolve_after`` normal readings apart are thus one incident.

    Examples
    --------
    >>> opened, inside = incidents_from_flags([0, 1, 0, 1, 0, 0, 0, 1], resolve_after=2)
    >>> opened.astype(int).tolist(), inside.astype(int).tolist()
    ([0, 1, 0, 0, 0, 0, 0, 1], [0, 1, 1, 1, 1, 1, 0, 1])
    """
    if resolve_after < 1:
        raise ValueError(f"resolve_after must be >= 1, got {resolve_after}")
    f = np.asarray(flags, dtype=bool)
    opened = np.zeros(len(f), dtype=bool)
    inside = np.zeros(len(f), dtype=bool)
    is_open, normal = False, 0
    for i, flag in enumerate(f.tolist()):
        if flag:
            opened[i] = not is_open
            is_open, normal = True, 0
            inside[i] = True
        elif is_open:
            inside[i] = True
            normal += 1
            if normal >= resolve_after:
                is_open = False
    return opened, inside


def _by_stream(rows: Iterable[Flagged]) -> dict[str, list[Flagged]]:
    """Rows per stream, each in time order (stable: equal times keep replay order)."""
    out: dict[str, list[Flagged]] = defaultdict(list)
    for r in rows:
        out[r.stream_id].append(r)
    for v in out.values():
        v.sort(key=lambda r: r.ts_ms)
    return out


def incidents(rows: Iterable[Flagged]) -> list[Incident]:
    """Every incident: opened by an ``anomaly`` reading, extended by ``incident`` readings."""
    out = []
    for sid, rs in _by_stream(rows).items():
        cur: list[int] | None = None  # [start_ms, end_ms]
        for r in rs:
            if r.anomaly:
                if cur is not None:
                    out.append(Incident(sid, cur[0], cur[1]))
                cur = [r.ts_ms, r.ts_ms]
            elif r.incident and cur is not None:
                cur[1] = r.ts_ms
            elif cur is not None:
                out.append(Incident(sid, cur[0], cur[1]))
                cur = None
        if cur is not None:
            out.append(Incident(sid, cur[0], cur[1]))
    return out


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def label_scores(
    rows: Sequence[Flagged], labels: Sequence[LabelLike], tolerance_ms: int
) -> dict[str, Any]:
    """Recall per kind and overall, precision, and the counts behind them.

    Examples
    --------
    >>> from training.fleet.styles import Label
    >>> rows = [Flagged("s", t, t in (5, 9), t in (5, 6, 9)) for t in range(12)]
    >>> res = label_scores(rows, [Label("s", "spike", 5, 5, "ch0", 8.0)], tolerance_ms=2)
    >>> res["recall"], res["precision"], res["incidents"]
    (1.0, 0.5, 2)
    """
    incs: dict[str, list[Incident]] = defaultdict(list)
    for inc in incidents(rows):
        incs[inc.stream_id].append(inc)
    caught: dict[str, list[bool]] = defaultdict(list)
    true_incidents: set[Incident] = set()
    for lab in labels:
        hit = False
        for inc in incs.get(lab.stream_id, []):
            opens_in = lab.start_ms <= inc.start_ms <= lab.end_ms + tolerance_ms
            if opens_in or inc.start_ms < lab.start_ms <= inc.end_ms:
                true_incidents.add(inc)
            hit = hit or opens_in
        caught[lab.kind].append(hit)
    n_inc = sum(len(v) for v in incs.values())
    n_hit = sum(sum(v) for v in caught.values())
    n_rows = len(rows)
    inside = sum(r.incident or r.anomaly for r in rows)
    return {
        "recall": _ratio(n_hit, len(labels)),
        "precision": _ratio(len(true_incidents), n_inc),
        "labels": len(labels),
        "caught": n_hit,
        "incidents": n_inc,
        "false_incidents": n_inc - len(true_incidents),
        "readings": n_rows,
        "in_incidents": inside,
        "share_in_incidents": _ratio(inside, n_rows),
        "recall_by_kind": {k: _ratio(sum(v), len(v)) for k, v in sorted(caught.items())},
        "caught_by_kind": {k: [sum(v), len(v)] for k, v in sorted(caught.items())},
    }


def clean_rates(rows: Iterable[Flagged], cold: int = COLD_READINGS) -> dict[str, dict[str, Any]]:
    """False incidents per 10,000 readings and share inside incidents, on clean data.

    Split into each stream's first ``cold`` readings (``"cold"``), the rest (``"warm"``)
    and both (``"all"``).

    Examples
    --------
    >>> rows = [Flagged("s", t, t == 3, 3 <= t <= 4) for t in range(2000)]
    >>> r = clean_rates(rows)
    >>> r["cold"]["false_per_10k"], r["warm"]["false_per_10k"], r["all"]["share_in_incidents"]
    (10.0, 0.0, 0.001)
    """
    counts = {part: [0, 0, 0] for part in ("cold", "warm", "all")}  # readings, opened, inside
    for rs in _by_stream(rows).values():
        for i, r in enumerate(rs):
            for part in ("cold" if i < cold else "warm", "all"):
                c = counts[part]
                c[0] += 1
                c[1] += r.anomaly
                c[2] += r.anomaly or r.incident
    return {
        part: {
            "readings": n,
            "false_incidents": opened,
            "in_incidents": inside,
            "false_per_10k": round(_ratio(opened * 10_000, n), 3),
            "share_in_incidents": round(_ratio(inside, n), 6),
        }
        for part, (n, opened, inside) in counts.items()
    }
