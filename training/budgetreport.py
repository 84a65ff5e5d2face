"""What the budget calibration measured, for the manifest, the training report and the log.

:mod:`training.budget` sets the thresholds; this module tells the operator how they came
out: the incidents the clean history opens with them (a warning when far over budget: the
history is too short or too irregular to calibrate on) and the events of the history that
were left out of the tail fits as anomalies in it (:func:`training.tail.tail_peaks`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from detector.core.incidents import RULE_NAMES
from detector.core.scoring import ScoringConfig
from detector.core.timefmt import iso_ms
from training.calibrate import EngineRun
from training.data import StreamSeries
from training.tail import history_outliers

__all__ = [
    "MAX_OUTLIERS",
    "OVER_BUDGET",
    "BudgetReport",
    "outliers",
    "report",
    "rules_of",
    "streams_apart",
]

log = logging.getLogger("training.budget")
MAX_OUTLIERS = 20  # of them listed in the manifest
OVER_BUDGET = 4.0  # times the budget the calibration replay may open before a warning
F = npt.NDArray[np.float64]


@dataclass(frozen=True)
class BudgetReport:
    """What the budget calibration measured; stored in the manifest's metrics."""

    budget_per_10k: float
    streams: int
    readings: int
    warmup: int
    thresholds: dict[str, float]
    incidents_per_10k: float  # on the calibration replay with the final thresholds
    by_rule: dict[str, int]  # incidents by the rule that opened them
    cold_incidents_per_10k: float  # in each stream's first 1,000 readings
    # events of the history left out of the tail fits (:func:`tail_peaks`), one entry per
    # stream and time: stream_id, ts_ms, rules {rule: peak}; the first MAX_OUTLIERS of them
    outliers: list[dict[str, Any]] = field(default_factory=list)
    outliers_total: int = 0
    over_budget: bool = False  # the replay opened over OVER_BUDGET x the budget (2 or more)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def outliers(
    series: Sequence[Sequence[StreamSeries]],
    runs: Sequence[EngineRun],
    stats: Sequence[dict[str, F]],
    gap: int,
) -> list[dict[str, Any]]:
    """Where the calibration history held clusters left out of the tail fits: one entry per
    stream and time, with each rule that left it out and its peak there, in time order.
    A rule's statistic may be missing from some parts (the shift rule needs long streams):
    its fit, like this, sees only the parts that have it. The statistics are the last
    round's, measured with the thresholds before the last step (equal once settled)."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for name in dict.fromkeys(k for s in stats for k in s):
        have = [(p, r, s[name]) for p, r, s in zip(series, runs, stats, strict=True) if name in s]
        ends = np.cumsum([len(r.stream) for _, r, _ in have])
        x = np.concatenate([x for _, _, x in have])
        for pos, peak in history_outliers(x, streams_apart([r.stream for _, r, _ in have]), gap):
            j = int(np.searchsorted(ends, pos, side="right"))
            part, run, _ = have[j]
            k = pos - (int(ends[j - 1]) if j else 0)
            one = part[int(run.stream[k])]
            at = int(one.ts_ms[int(run.index[k])])
            entry = found.setdefault((one.stream_id, at), {"stream_id": one.stream_id, "ts_ms": at})
            entry.setdefault("rules", {})[name] = round(peak, 2)
    events = sorted(found.values(), key=lambda o: (o["ts_ms"], o["stream_id"]))
    if events:
        log.warning(
            "the calibration history holds %d event(s) far beyond its normal tail, left out of "
            "the thresholds' fit as anomalies in it (check the training data there): %s",
            len(events),
            ", ".join(
                f"{o['stream_id']} at {iso_ms(o['ts_ms'])} ({rules_of(o)})" for o in events[:10]
            ),
        )
    return events


def rules_of(event: dict[str, Any]) -> str:
    """An outlier's rules and peaks, for people: "error 165.38, peak 700.82"."""
    return ", ".join(f"{r} {v:g}" for r, v in event["rules"].items())


def streams_apart(streams: Sequence[npt.NDArray[np.int64]]) -> npt.NDArray[np.int64]:
    offsets = np.cumsum([0] + [int(s.max()) + 1 if s.size else 0 for s in streams])
    return np.concatenate([s + o for s, o in zip(streams, offsets[:-1], strict=True)])


def report(
    run: EngineRun, scoring: ScoringConfig, budget: float, streams: int, levels: dict[str, float]
) -> BudgetReport:
    n = max(len(run.raw), 1)
    opened = np.flatnonzero(run.opened)
    by_rule: dict[str, int] = {}
    for mask in run.rules[opened].tolist():
        name = next((r for k, r in enumerate(RULE_NAMES) if mask >> k & 1), "error")
        by_rule[name] = by_rule.get(name, 0) + 1
    cold = run.index < 1000
    cold_n = max(int(cold.sum()), 1)
    report = BudgetReport(
        budget_per_10k=budget,
        streams=streams,
        readings=len(run.raw),
        warmup=scoring.warmup,
        thresholds={k: round(v, 4) for k, v in levels.items()},
        incidents_per_10k=round(len(opened) / n * 1e4, 3),
        by_rule=by_rule,
        cold_incidents_per_10k=round(int(run.opened[cold].sum()) / cold_n * 1e4, 3),
    )
    log.info(
        "calibrated for %.2f incidents per 10,000 readings: the calibration replay opened %.2f "
        "(%s), warm-up %d readings",
        budget,
        report.incidents_per_10k,
        by_rule or "none",
        scoring.warmup,
    )
    if len(opened) >= 2 and report.incidents_per_10k > OVER_BUDGET * budget:
        report = replace(report, over_budget=True)
        log.warning(
            "the clean history replayed with the calibrated thresholds opened %.1f incidents "
            "per 10,000 readings where the budget asks for %.2f: %d readings over %d streams "
            "are too few or too irregular to calibrate on; expect more false alarms than "
            "asked, or train on more clean history",
            report.incidents_per_10k,
            budget,
            len(run.raw),
            streams,
        )
    return report
