"""Incidents: one open event when a stream turns anomalous, one resolved event when it is over.

An operator is paged per *incident*, never per anomalous reading. A stream's first reading
that some rule flags opens an incident; while it is open, further flagged readings extend it
(peak score, readings, the rules and the features involved) instead of raising new alerts;
``resolve_after`` normal readings in a row resolve it. A reading belongs to the incident from
the one that opened it to the one that resolved it, both included.

*Held open while the stream stays away* (``hold``): the model adopts a new level within a
few readings, so a valve that stays shut or a rotor that stays unbalanced reads as normal
long before it is over, and its return to normal then opens a second incident. Each stream
keeps, per channel, a recent level (EW average over ``HOLD_FAST`` readings) and a
reference (EW mean and variance over ``HOLD_SLOW`` readings, learnt only while no incident
is open); an incident does not resolve while some channel's recent level lies more than
``hold`` reference spreads from its reference, for at most ``hold_max`` readings. The
spread is floored at ``HOLD_FLOOR`` of the scaler's variance; a reference younger than
``HOLD_SLOW`` readings holds nothing. A cycle or a wander the reference has seen does not
hold: it is inside its spread (docs/quality.md, session 21).

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
    "rule_flagged",
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
    "difference",
    "level",
)
# Scalar columns of the block, then one column per feature (the peak |error| in the incident).
OPEN, READINGS, FLAGGED, PEAK, NORMAL, RULES, TS_HI, TS_LO = range(8)
INCIDENT_COLUMNS = 8
_TS_SPLIT = float(2**22)
# The hold's per-channel state: blocks of F columns (recent level, reference, its
# variance, readings it learnt from), in this order.
HOLD_BLOCKS = 4
HOLD_FAST = 8  # readings in the recent level's EW average (the shift rule's fast span)
HOLD_SLOW = 200  # readings in the reference's EW mean and variance (the shift rule's slow)
HOLD_FLOOR = 0.01  # of the scaler's variance (1 in scaler units): the least spread


@dataclass(frozen=True)
class IncidentConfig:
    """When an open incident is over.

    >>> IncidentConfig(resolve_after=10).resolve_after
    10
    """

    resolve_after: int = 10  # normal readings in a row that resolve an open incident
    hold: float = 4.0  # reference spreads away that keep an incident open (0: never)
    hold_max: int = 2000  # readings after which an incident is no longer held open

    def __post_init__(self) -> None:
        if self.resolve_after < 1:
            raise ValueError(
                f"incidents.resolve_after must be >= 1 reading, got {self.resolve_after}"
            )
        if not self.hold >= 0 or self.hold_max < 1:
            raise ValueError(
                f"incidents.hold must be >= 0 and hold_max >= 1, got {self.hold}, {self.hold_max}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IncidentConfig:
        return cls(
            resolve_after=int(d.get("resolve_after", cls.resolve_after)),
            hold=float(d.get("hold", cls.hold)),
            hold_max=int(d.get("hold_max", cls.hold_max)),
        )


@dataclass(frozen=True)
class IncidentStep:
    """One wave's incident events; tensors (B,) unless noted.

    ``opened``: an incident opened at this reading (the alert); ``inside``: the reading lies in
    an open incident (``opened`` and ``resolved`` included); ``resolved``: this reading resolved
    the incident. For resolved readings, ``opened_ms`` (int64), ``readings``, ``flagged``,
    ``peak``, ``rules`` (bit mask) and ``feature_peak`` (B, F) describe the incident that ended.
    ``block`` (B, INCIDENT_COLUMNS + F) is the new state, ``hold`` (B, HOLD_BLOCKS x F) the
    hold's (None without one).
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
    hold: Tensor | None = None


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
    x: Tensor | None = None,
    hold: Tensor | None = None,
) -> IncidentStep:
    """Advance each stream's incident by one reading.

    ``block`` (B, INCIDENT_COLUMNS + F) the state before; ``flagged`` (B,) bool: some rule
    flagged the reading (warm, observed); ``rules`` (B,) float bit mask of the rules that did;
    ``score`` (B,); ``errors`` (B, F) per-feature errors; ``observed`` (B,) bool: the reading
    carried a value (a reading with nothing observed neither extends nor resolves);
    ``ts_ms`` (B,) int64. With ``hold`` (B, HOLD_BLOCKS x F), its state, and ``x`` (B, F)
    the readings in scaler units (nan where missing), incidents are held open (above).
    """
    was_open = block[:, OPEN] > 0
    opened = flagged & ~was_open
    zero = torch.zeros_like(score)
    calm = torch.where(observed & was_open, block[:, NORMAL] + 1, block[:, NORMAL])
    normal = torch.where(flagged, zero, calm)
    readings = torch.where(opened, zero + 1, torch.where(was_open, block[:, READINGS] + 1, zero))
    resolved = was_open & ~flagged & (normal >= cfg.resolve_after)
    fast = None
    if hold is not None and x is not None and cfg.hold > 0:
        obs = ~torch.isnan(x)
        fast, away = _held(hold, x, obs, readings, cfg)
        resolved = resolved & ~away
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
    if fast is not None:  # the hold is on: hold and x are given
        assert hold is not None and x is not None
        hold = _learn(hold, x, obs, fast, learn=~still)
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
        hold=hold,
    )


def _held(
    hold: Tensor, x: Tensor, obs: Tensor, readings: Tensor, cfg: IncidentConfig
) -> tuple[Tensor, Tensor]:
    """The recent level after this reading (B, F) and whether the stream is away (B,)."""
    f = x.shape[1]
    fast, ref, var, seen = hold[:, :f], hold[:, f : 2 * f], hold[:, 2 * f : 3 * f], hold[:, 3 * f :]
    start = torch.where(obs & (seen <= 0) & (fast == 0), x, fast)  # a cold channel's first
    fast = torch.where(obs, torch.lerp(start, x, 2.0 / (HOLD_FAST + 1)), fast)
    far = (fast - ref).square() > cfg.hold**2 * var.clamp(min=HOLD_FLOOR)
    return fast, ((seen >= HOLD_SLOW) & far).any(dim=1) & (readings < cfg.hold_max)


def _learn(hold: Tensor, x: Tensor, obs: Tensor, fast: Tensor, learn: Tensor) -> Tensor:
    """The hold's next state: the recent level, and the reference learnt where ``learn``."""
    f, a = x.shape[1], 2.0 / (HOLD_SLOW + 1)
    ref, var, seen = hold[:, f : 2 * f], hold[:, 2 * f : 3 * f], hold[:, 3 * f :]
    obs = obs & learn.unsqueeze(1)
    ref = torch.where(obs & (seen <= 0), x, ref)  # its first value: no spread yet
    d = torch.where(obs, x - ref, 0.0)
    var = torch.where(obs, (1 - a) * torch.addcmul(var, d, d, value=a), var)
    # float32 stops counting at 2**24: a saturated count still reads as old enough
    return torch.cat([fast, ref + a * d, var, seen + obs], dim=1)


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


def rule_flagged(block: Tensor, name: str) -> Tensor:
    """(B,) bool: rule ``name`` flagged some reading of each stream's open incident
    (``block`` the incident block of the statistics row; a closed one is zeros)."""
    return (block[:, RULES].long() & (1 << RULE_NAMES.index(name))) != 0


def rule_names(mask: int) -> list[str]:
    """The rules of a bit mask, in ``RULE_NAMES`` order.

    >>> rule_names(0b101)
    ['error', 'sustained']
    """
    return [name for k, name in enumerate(RULE_NAMES) if mask >> k & 1]
