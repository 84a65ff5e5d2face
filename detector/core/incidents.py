"""Incidents: one open event when a stream turns anomalous, one resolved event when it is over.

An operator is paged per *incident*, never per anomalous reading. A stream's first reading
that some rule flags opens an incident; while it is open, further flagged readings extend it
(peak score, readings, the rules and the features involved) instead of raising new alerts;
``resolve_after`` normal readings in a row resolve it. A reading belongs to the incident from
the one that opened it to the one that resolved it, both included.

The state is per stream and lives in the stream's statistics row (block ``incident``:
``INCIDENT_COLUMNS`` scalars, then one column per feature), so it is checkpointed, restored and
reset with the rest of the stream's state. Everything here is float32 tensors on the engine's
device: epoch milliseconds are kept as two exact parts (``ts // 2**22`` and ``ts % 2**22``,
each below float32's 2**24 integer limit).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "INCIDENT_COLUMNS",
    "RULE_NAMES",
    "Dropped",
    "IncidentConfig",
    "IncidentStep",
    "dropped",
    "incident_step",
    "rule_names",
]

# Rules, by bit: a reading's rule mask has bit k set when rule k flagged it. Append only.
RULE_NAMES = (
    "error",
    "flatline",
    "sustained",
    "new_range",
    "peak",
    "shift",
    "spike",
)
# Scalar columns of the block, then one column per feature (the peak |error| in the incident).
OPEN, READINGS, FLAGGED, PEAK, NORMAL, RULES, TS_HI, TS_LO = range(8)
INCIDENT_COLUMNS = 8
_TS_SPLIT = float(2**22)


@dataclass(frozen=True)
class IncidentConfig:
    """When an open incident is over.

    >>> IncidentConfig(resolve_after=10).resolve_after
    10
    """

    resolve_after: int = 10  # normal readings in a row that resolve an open incident

    def __post_init__(self) -> None:
        if self.resolve_after < 1:
            raise ValueError(
                f"incidents.resolve_after must be >= 1 reading, got {self.resolve_after}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IncidentConfig:
        return cls(resolve_after=int(d.get("resolve_after", cls.resolve_after)))


@dataclass(frozen=True)
class IncidentStep:
    """One wave's incident events; tensors (B,) unless noted.

    ``opened``: an incident opened at this reading (the alert); ``inside``: the reading lies in
    an open incident (``opened`` and ``resolved`` included); ``resolved``: this reading resolved
    the incident. For resolved readings, ``opened_ms`` (int64), ``readings``, ``flagged``,
    ``peak``, ``rules`` (bit mask) and ``feature_peak`` (B, F) describe the incident that ended.
    ``block`` (B, INCIDENT_COLUMNS + F) is the new state.
    """

    opened: Tensor
    inside: Tensor
    resolved: Tensor
    opened_ms: Tensor
    readings: Tensor
    flagged: Tensor
    peak: Tensor
    rules: Tensor
    feature_peak: Tensor
    block: Tensor


def _split_ms(ts_ms: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Epoch ms (B,) int64 as two parts, each exact in float32."""
    hi = torch.div(ts_ms, int(_TS_SPLIT), rounding_mode="floor")
    return hi.to(dtype), (ts_ms - hi * int(_TS_SPLIT)).to(dtype)


def incident_step(
    block: Tensor,
    flagged: Tensor,
    rules: Tensor,
    score: Tensor,
    errors: Tensor,
    observed: Tensor,
    ts_ms: Tensor,
    cfg: IncidentConfig,
) -> IncidentStep:
    """Advance each stream's incident by one reading.

    ``block`` (B, INCIDENT_COLUMNS + F) the state before; ``flagged`` (B,) bool: some rule
    flagged the reading (warm, observed); ``rules`` (B,) float bit mask of the rules that did;
    ``score`` (B,); ``errors`` (B, F) per-feature errors; ``observed`` (B,) bool: the reading
    carried a value (a reading with nothing observed neither extends nor resolves);
    ``ts_ms`` (B,) int64.
    """
    was_open = block[:, OPEN] > 0
    opened = flagged & ~was_open
    zero = torch.zeros_like(score)
    calm = torch.where(observed & was_open, block[:, NORMAL] + 1, block[:, NORMAL])
    normal = torch.where(flagged, zero, calm)
    resolved = was_open & ~flagged & (normal >= cfg.resolve_after)
    readings = torch.where(opened, zero + 1, torch.where(was_open, block[:, READINGS] + 1, zero))
    n_flagged = torch.where(opened, zero + 1, block[:, FLAGGED] + flagged.float())
    grown = torch.where(flagged, torch.maximum(block[:, PEAK], score), block[:, PEAK])
    peak = torch.where(opened, score, grown)
    # Rule masks are small integers held as floats: OR them through int64.
    joined = torch.where(flagged, (block[:, RULES].long() | rules.long()).float(), block[:, RULES])
    mask = torch.where(opened, rules, joined)
    hi, lo = _split_ms(ts_ms, score.dtype)
    ts_hi = torch.where(opened, hi, block[:, TS_HI])
    ts_lo = torch.where(opened, lo, block[:, TS_LO])
    feat, mag = block[:, INCIDENT_COLUMNS:], errors.abs()
    feat = torch.where(flagged.unsqueeze(1), torch.maximum(feat, mag), feat)
    feat = torch.where(opened.unsqueeze(1), mag, feat)
    opened_ms = ts_hi.to(torch.int64) * int(_TS_SPLIT) + ts_lo.to(torch.int64)
    inside = was_open | opened
    still = inside & ~resolved
    cols = [still.float(), readings, n_flagged, peak, normal, mask, ts_hi, ts_lo]
    new = torch.cat([torch.stack(cols, dim=1), feat], dim=1)
    new = torch.where(still.unsqueeze(1), new, torch.zeros_like(new))  # a closed one is zeros
    return IncidentStep(
        opened=opened,
        inside=inside,
        resolved=resolved,
        opened_ms=opened_ms,
        readings=readings,
        flagged=n_flagged,
        peak=peak,
        rules=mask,
        feature_peak=feat,
        block=new,
    )


@dataclass(frozen=True)
class Dropped:
    """An open incident whose stream's state was dropped (idle TTL, LRU eviction, a model of
    another state shape): no reading will resolve it, so it is closed here, with ``reason``.
    ``last_ts_ms`` is the stream's last reading's time; ``feature_peak`` (F,)."""

    stream_id: str
    reason: str  # "expired" | "evicted" | "model_change"
    last_ts_ms: int
    opened_ms: int
    readings: int
    flagged: int
    peak: float
    rules: int
    feature_peak: np.ndarray


def dropped(stream_id: str, reason: str, last_ts_ms: int, block: np.ndarray) -> Dropped | None:
    """The incident in a stream's incident block (host copy), or None when none is open."""
    if not block[OPEN] > 0:
        return None
    return Dropped(
        stream_id,
        reason,
        last_ts_ms,
        opened_ms=int(block[TS_HI]) * int(_TS_SPLIT) + int(block[TS_LO]),
        readings=int(block[READINGS]),
        flagged=int(block[FLAGGED]),
        peak=float(block[PEAK]),
        rules=int(block[RULES]),
        feature_peak=np.asarray(block[INCIDENT_COLUMNS:], np.float32),
    )


def rule_names(mask: int) -> list[str]:
    """The rules of a bit mask, in ``RULE_NAMES`` order.

    >>> rule_names(0b101)
    ['error', 'sustained']
    """
    return [name for k, name in enumerate(RULE_NAMES) if mask >> k & 1]
