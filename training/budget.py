"""Thresholds aimed at a false-alarm budget, set by replaying clean history as live traffic.

An operator counts *incidents*, not readings: a threshold is right when clean data opens at
most ``budget`` incidents per stream per 10,000 readings. What opens them is what the live
engine does, so the thresholds are measured on a replay through the live engine
(:func:`training.calibrate.run_engine`): every stream of the calibration set starts from a
cold state, every rule is on, flagged readings are protected and winsorised as live, and
incidents group flags as live.

Each rule with a threshold gets a share of the budget (``SHARES``, in proportion among the
rules that are on). Its statistic per reading — the error rule's score, the peak rule's
largest ``|error| / scale``, the sustained rule's largest ``|average| / scale``, the shift
rule's largest ``|z| / scale``, the level rule's largest average of innovations in its
own spread over its scale, the spike rule's largest pair over its scale, the difference
rule's largest change in its spread over its scale — is
*declustered* as incidents are: exceedances of a base level closer together than
``resolve_after`` readings are one cluster, whose peak counts once. Cluster peaks above the
base are fitted by an exponential (peaks over threshold with declustering, the standard
treatment of clustered extremes), and the threshold is where the fitted rate of clusters
meets the rule's share of the budget — far beyond what a few thousand clean readings show
directly. An exponential, not a generalised Pareto with its shape estimated: tried on the
dev seeds, a shape fitted to a few thousand readings put Gaussian-tailed statistics' levels
too low (6x the asked rate on |N(0,1)|) or heavy-tailed ones far too high; the exponential
errs on the safe side for light tails (tests/unit/training/test_budget.py).
Thresholds change what the engine protects and winsorises, and so the statistics they are
fitted on: a low error threshold winsorises the running error statistics harder (smaller
spread, larger scores) and protects more readings (a random-walk channel's state left
behind, large errors for many readings); a high one neither. The replay is therefore
repeated until the thresholds reproduce themselves within 2 % (at most ``ROUNDS``
replays), each round taking what its statistics ask for until a threshold proved too low
and one proved too high bracket the fixed point, then a false-position step between them.
The plain iteration, run twice, swung between the two sides on coloured noise
(docs/quality.md, session 7). The peak and spike rules' per-feature scales
(:mod:`training.channelscale`) are measured on the first replay, where those two rules are
not on yet, at their shares of the budget, and kept for every later round.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import numpy.typing as npt

from detector.core.incidents import RULE_NAMES
from detector.core.model import ReconstructionLSTM
from detector.core.scoring import Scaler, ScoringConfig
from training.budgetreport import MAX_OUTLIERS, BudgetReport, outliers, report, streams_apart
from training.calibrate import EngineRun, run_engine
from training.channelscale import measured_scales, peak_channels, shipped_scales, spike_channels
from training.context import judged_only, shift_view
from training.data import StreamSeries
from training.diffcal import difference_statistic
from training.levelcal import LEVEL_FLOOR, level_statistic
from training.parallel import Jobs
from training.progress import PartsEta
from training.search import ThresholdSearch
from training.shiftcal import SHIFT_FLOOR, shift_statistic
from training.sustaincal import sustained_statistic
from training.tail import cluster_peaks, rate_level, scaled_max, seen_level
from training.warmup import choose_warmup

__all__ = [
    "SHARES",
    "SHIFT_FLOOR",
    "BudgetReport",
    "Part",
    "cluster_peaks",
    "fit_budget",
    "fit_budget_pooled",
    "least",
    "rate_level",
    "spike_statistic",
]

log = logging.getLogger(__name__)

# Of the budget, by rule with a threshold, in proportion among those on. Chosen on the dev
# seeds (docs/quality.md): the peak rule sees a one-channel deviation the RMS score
# dilutes; the shift rule, level shifts and drifts that the others see one reading of.
# The spike rule's share is the peak rule's (both judge one reading's deviation), chosen
# before any fleet run with it (docs/quality.md, session 16).
SHARES = {
    "error": 0.2,
    "peak": 0.4,
    "sustained": 0.4,
    "shift": 0.4,
    "level": 0.4,  # as the others': chosen before any fleet run with it (session 45)
    "spike": 0.4,
    "difference": 0.4,  # as the others': chosen before any fleet run with it (session 26)
}
# SHIFT_FLOOR (2.0, in training.shiftcal): the shift rule's least threshold where ``floor``
# is higher; and never below what its clean history itself reached at the rule's rate.
# ``floor`` (3.5) keeps a tiny or very regular history from setting a hair trigger on a
# reading's error; the shift rule's
# statistic is a standardised level over ~``shift.fast`` readings whose clean tail is far
# lighter: on the dev fleets the budget's fit asked for 2.0-3.3 and ``floor`` held 10 of
# 12 models at 3.5, below their level shifts. At 2.0 the dev fleets' recall rose 0.72 ->
# 0.78, and their clean streams run for 20,000 readings stayed at 0.0-0.3 false incidents
# per 10,000 — once every calibration part judged its streams under the fleet's prior as
# live scoring does (before, two streams of one dev fleet alarmed again and again:
# docs/quality.md, sessions 28 and 29).
ROUNDS = 8  # replays at most to find thresholds that reproduce themselves
SETTLED = 0.02  # ... within this relative change
F = npt.NDArray[np.float64]


def _statistics(run: EngineRun, scoring: ScoringConfig, free: dict[str, list[F]]) -> dict[str, F]:
    # A reading another rule flagged has its score lifted to the error threshold: that is
    # the other rule's exceedance, not the error's (whose own z stayed below it), so it is
    # left out here rather than counted twice.
    lifted = (run.rules != 0) & (run.rules & 1 << RULE_NAMES.index("error") == 0)
    out = {"error": np.where(lifted, -np.inf, run.score.astype(np.float64))}
    if scoring.peak is not None:
        out["peak"] = scaled_max(peak_channels(run), scoring.peak.scale)
    sus = scoring.sustained
    if sus is not None and sus.ready(run.errors.shape[1]):
        out["sustained"] = sustained_statistic(run, sus)
    if scoring.spike is not None:
        out["spike"] = spike_statistic(run, scoring.spike.scale)
    for name, per_series in free.items():  # from each series' first reading: the collected
        out[name] = np.array([per_series[s][k] for s, k in zip(run.stream, run.index, strict=True)])
    return out


def spike_statistic(run: EngineRun, scale: tuple[float, ...] = ()) -> F:
    """The spike rule's statistic per reading of a run: the largest pair
    (:func:`training.channelscale.spike_channels`) over ``scale``; a stream's first
    collected reading pairs with its last warm-up reading, as live."""
    return scaled_max(spike_channels(run), scale)


def _levels_of(scoring: ScoringConfig) -> dict[str, float]:
    """The thresholds ``scoring`` has now, by rule (those not calibrated yet left out)."""
    out = {"error": scoring.threshold}
    if scoring.peak is not None and scoring.peak.ready():
        out["peak"] = scoring.peak.threshold
    if scoring.sustained is not None and scoring.sustained.threshold > 0:
        out["sustained"] = scoring.sustained.threshold
    if scoring.shift is not None and scoring.shift.threshold > 0:
        out["shift"] = scoring.shift.threshold
    if scoring.level is not None and scoring.level.threshold > 0:
        out["level"] = scoring.level.threshold
    if scoring.spike is not None and scoring.spike.ready():
        out["spike"] = scoring.spike.threshold
    if scoring.difference is not None and scoring.difference.threshold > 0:
        out["difference"] = scoring.difference.threshold
    return {k: v for k, v in out.items() if math.isfinite(v) and v > 0}


def _with_thresholds(scoring: ScoringConfig, levels: dict[str, float]) -> ScoringConfig:
    out = replace(scoring, threshold=levels["error"])
    if "sustained" in levels and out.sustained is not None:
        out = replace(out, sustained=replace(out.sustained, threshold=levels["sustained"]))
    if "peak" in levels and out.peak is not None:
        out = replace(out, peak=replace(out.peak, threshold=levels["peak"]))
    if "shift" in levels and out.shift is not None:
        out = replace(out, shift=replace(out.shift, threshold=levels["shift"]))
    if "level" in levels and out.level is not None:
        out = replace(out, level=replace(out.level, threshold=levels["level"]))
    if "spike" in levels and out.spike is not None:
        out = replace(out, spike=replace(out.spike, threshold=levels["spike"]))
    if "difference" in levels and out.difference is not None:
        out = replace(out, difference=replace(out.difference, threshold=levels["difference"]))
    return out


@dataclass(frozen=True)
class Part:
    """A model and the clean streams it is calibrated on, none of which it was fitted on.

    Cross-fitting (:mod:`training.pipeline`) gives several: each model's statistics are in
    units of its own calibration (equalised errors, its prior, its sustained scale), so
    their tails pool into one threshold per rule."""

    module: ReconstructionLSTM
    scaler: Scaler
    series: Sequence[StreamSeries]
    scoring: ScoringConfig
    collect_from: Sequence[int] | None = None  # per series; default 0


def fit_budget(
    module: ReconstructionLSTM,
    scaler: Scaler,
    features: Sequence[str],
    series: Sequence[StreamSeries],
    scoring: ScoringConfig,
    budget: float,
    *,
    collect_from: Sequence[int] | None = None,
    floor: float = 3.5,
    device: str = "cpu",
) -> tuple[ScoringConfig, BudgetReport]:
    """``scoring`` with its warm-up and thresholds set so that ``series`` (clean), replayed
    from a cold state, opens ``budget`` incidents per stream per 10,000 readings.

    ``collect_from`` (per series; default 0): the first reading that is measured, as when
    a fit's own streams lend only their held-out tails; earlier readings only run through
    the engine."""
    part = Part(module, scaler, series, scoring, collect_from)
    scorings, report = fit_budget_pooled([part], features, budget, floor=floor, device=device)
    return scorings[0], report


def fit_budget_pooled(
    parts: Sequence[Part],
    features: Sequence[str],
    budget: float,
    *,
    floor: float = 3.5,
    device: str = "cpu",
    jobs: int = 1,
) -> tuple[list[ScoringConfig], BudgetReport]:
    """:func:`fit_budget` over several models' calibration streams at once: one warm-up
    (the longest) and one threshold per rule from the pooled statistics, returned as each
    part's scoring with them set (the first part's is the shipped model's). The parts
    replay side by side in up to ``jobs`` processes (:class:`training.parallel.Jobs`)."""
    if not budget > 0:
        raise ValueError(f"the false-alarm budget must be > 0 incidents per 10,000, got {budget}")
    with Jobs(jobs, device) as pool:
        return _fit_pooled(pool, parts, features, budget, floor, device)


def _fit_pooled(
    pool: Jobs,
    parts: Sequence[Part],
    features: Sequence[str],
    budget: float,
    floor: float,
    device: str,
) -> tuple[list[ScoringConfig], BudgetReport]:
    first = parts[0].scoring
    gap = first.incidents.resolve_after if first.incidents is not None else 1
    warmup = max(
        pool.map(
            [
                partial(choose_warmup, p.module, p.scaler, features, p.series, p.scoring, device)
                for p in parts
            ]
        )
    )
    scorings = [shipped_scales(replace(p.scoring, warmup=warmup), first) for p in parts]
    starts = [
        list(p.collect_from) if p.collect_from is not None else [0] * len(p.series) for p in parts
    ]
    collect = [[max(k, warmup) for k in start] for start in starts]
    levels = _levels_of(first)
    search: dict[str, ThresholdSearch] = {}
    free = [_model_free(p, sc) for p, sc in zip(parts, scorings, strict=True)]
    eta = PartsEta(ROUNDS)  # at most: the rounds usually settle sooner
    for k in range(ROUNDS):
        runs = _replay(pool, parts, features, scorings, collect, device)
        stats = [_statistics(run, sc, fr) for run, sc, fr in zip(runs, scorings, free, strict=True)]
        spent = sum(SHARES[name] for name in stats[0])
        if k == 0:  # peak and spike scales: from replays those two rules had no part in
            rates = {n: SHARES[n] / spent * budget / 1e4 for n in stats[0]}
            scorings = measured_scales(runs, scorings, rates, gap, floor)
            stats = [
                _statistics(run, sc, fr) for run, sc, fr in zip(runs, scorings, free, strict=True)
            ]
        found = {}
        for name in stats[0]:
            have = [(s[name], r.stream) for s, r in zip(stats, runs, strict=True) if name in s]
            x = np.concatenate([a for a, _ in have])  # streams kept apart: clusters never span
            stream = streams_apart([b for _, b in have])
            share = SHARES[name] / spent
            rate = share * budget / 1e4
            found[name] = rate_level(x, stream, rate, gap, least(name, floor, x, stream, rate, gap))
        settled = all(n in levels and abs(v / levels[n] - 1) < SETTLED for n, v in found.items())
        eta.tick()
        log.info(  # minutes can pass here: say that the calibration is moving
            "budget round %d of at most %d: thresholds %s asked for %s%s",
            k + 1,
            ROUNDS,
            _rounded(levels),
            _rounded(found),
            "" if settled else eta.left("at most"),
        )
        if not settled:
            found = {
                n: search.setdefault(n, ThresholdSearch()).next(
                    levels[n], v, {o: t for o, t in levels.items() if o != n}
                )
                if n in levels
                else v
                for n, v in found.items()
            }
        levels = found
        scorings = [_with_thresholds(sc, levels) for sc in scorings]
        if settled:
            break
    log.debug("budget thresholds settled at %s", levels)
    odd = outliers([p.series for p in parts], runs, stats, gap)
    final = _replay(pool, parts, features, scorings, starts, device)
    streams = len({s.stream_id for p in parts for s in p.series})  # time blocks share ids
    rep = report(_concat(final), scorings[0], budget, streams, levels)
    return scorings, replace(rep, outliers=odd[:MAX_OUTLIERS], outliers_total=len(odd))


def least(
    name: str, floor: float, stat: F, stream: npt.NDArray[np.int64], rate: float, gap: int
) -> float:
    """The least threshold rule ``name`` may get from its statistic ``stat`` at ``rate``
    clusters per reading: ``floor``; for the shift and level rules :data:`SHIFT_FLOOR` and
    what their clean history itself reached at that rate (:func:`training.tail.seen_level`):
    their statistics are in units of their least channel's tail, not of a spread."""
    if name not in ("shift", "level"):
        return floor
    least = SHIFT_FLOOR if name == "shift" else LEVEL_FLOOR
    return max(min(floor, least), seen_level(stat, stream, rate, gap))


def _rounded(levels: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in levels.items()}


def _model_free(part: Part, scoring: ScoringConfig) -> dict[str, list[F]]:
    """The model-free rules' statistics on ``part``'s series, per series, of those on,
    each on the channels as the engine shows them to the rule."""
    f, warmup, out = len(part.scaler.mean), scoring.warmup, {}
    sh, lv, dc = scoring.shift, scoring.level, scoring.difference
    if sh is not None and sh.ready(f):
        out["shift"] = shift_statistic(shift_view(part.series, scoring), part.scaler, sh, warmup)
    if lv is not None and lv.ready(f):
        out["level"] = level_statistic(shift_view(part.series, scoring), part.scaler, lv, warmup)
    if dc is not None and dc.ready(f):
        series = judged_only(part.series, scoring.context, scoring.held)
        out["difference"] = difference_statistic(series, part.scaler, dc, warmup)
    return out


def _replay(
    pool: Jobs,
    parts: Sequence[Part],
    features: Sequence[str],
    scorings: Sequence[ScoringConfig],
    collect: Sequence[Sequence[int]],
    device: str,
) -> list[EngineRun]:
    return pool.map(
        [
            partial(
                run_engine,
                p.module,
                p.scaler,
                features,
                p.series,
                sc,
                collect_from=c,
                device=device,
            )
            for p, sc, c in zip(parts, scorings, collect, strict=True)
        ]
    )


def _concat(runs: Sequence[EngineRun]) -> EngineRun:
    fields = {
        k: np.concatenate([getattr(r, k) for r in runs])
        for k in EngineRun.__dataclass_fields__
        if k != "stream"
    }
    return EngineRun(stream=streams_apart([r.stream for r in runs]), **fields)
