"""Rule configs from the flat fields of manifests written before rules had their own parts
(:meth:`detector.core.scoring.ScoringConfig.from_dict` reads both)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detector.core.newrange import RangeConfig
from detector.core.rules import FlatlineConfig, SustainConfig

__all__ = ["flat_rules"]


def flat_rules(d: Mapping[str, Any], kw: Mapping[str, Any]) -> dict[str, Any]:
    """Rule configs from the flat fields manifests held before rules had their own parts
    (``stuck_after``; ``sustain``, ``sustain_scale``, ``sustain_threshold``;
    ``range_margin``, ``range_after`` with the shared ``cooldown``). Where both are given,
    a flat field wins over the nested config's (an override of an old name)."""
    out: dict[str, Any] = {}
    if "stuck_after" in d:
        limits = tuple(int(v) for v in d["stuck_after"])
        out["flatline"] = FlatlineConfig(limits) if limits else None
    if {"sustain", "sustain_scale", "sustain_threshold"} & set(d):
        s = kw.get("sustained")
        span = int(d.get("sustain", s.span if s else 0))
        scale = tuple(float(v) for v in d.get("sustain_scale", s.scale if s else ()))
        thr = float(d.get("sustain_threshold", s.threshold if s else 0.0))
        own = bool(s.own) if s else False
        out["sustained"] = SustainConfig(span, scale, thr, own) if span > 0 else None
    if {"range_margin", "range_after"} & set(d):
        r = kw.get("new_range")
        margin = float(d.get("range_margin", r.margin if r else 0.0))
        after = int(d.get("range_after", r.after if r else 0))
        cooldown = r.cooldown if r else int(d.get("cooldown", 0))
        out["new_range"] = RangeConfig(margin, after, cooldown) if margin > 0 else None
    return out
