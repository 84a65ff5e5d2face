"""One training run: fit, equalise, calibrate to a false-alarm budget, report, publish.

Calibration data come from streams the fit never saw: with ``holdout`` > 0 and enough streams, a
fraction of the streams is held out of the fit, and their *whole* history — every hour of the
data's cycle, from a cold state, as a new stream arrives live — is what the error prior and the
thresholds are measured on (:mod:`training.budget`). What applies to every stream alike is
measured on every stream: the error scale, the whitening and the no-model rules' priors (on
each one's recent history; a spread sample of 1,000 streams of a larger fleet,
:mod:`training.calset`) and the flatline limits (a run of repeats needs no model). With too
few streams (a single NAB file, say), the fit's held-out tails are used instead, their state
warmed up by the training part.

A quarter of a small fleet is few streams for a tail fit, so by default the streams are split
into folds (:func:`training.data.folds`; the first is the shipped model's hold-out) and one more
model is fitted without each other fold and calibrated on it: the budget's thresholds are then
fitted on every stream, each scored by a model that never saw it (cross-fitting;
docs/training.md). With no stream held out (under 8 streams, or ``--holdout 0``), the folds are
*time blocks* of every stream instead: one more model fitted without each earlier block and
calibrated on it, so that the budget's thresholds are fitted on the whole history, its first
block from a cold state, and not only on the last fifth (docs/quality.md, session 22). A rule
a block is too short for (the sustained and shift rules need hundreds of readings) stays off.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from detector.artifacts import publish
from detector.core.bundle import ModelBundle
from detector.core.difference import DifferenceConfig
from detector.core.level import LevelConfig
from detector.core.model import ReconstructionLSTM
from detector.core.peak import PeakConfig
from detector.core.rules import SustainConfig
from detector.core.scoring import Scaler, ScoringConfig
from detector.core.shift import ShiftConfig
from detector.core.spike import SpikeConfig
from detector.core.tame import raw_of
from detector.errors import InputError
from detector.observability.logs import each_message_once
from training.budget import BudgetReport, Part, fit_budget_pooled
from training.calibrate import Calibration, calibrate_detail, equalize_and_whiten, run_engine
from training.calset import CONTEXT, CalSet, calibration_set, cut, settled, short_history, unheld
from training.context import choose_context, held_channels, served_scoring, warn_if_context_changes
from training.data import StreamSeries, folds
from training.fit import FitConfig, FitResult, Progress, fit
from training.progress import PartsEta
from training.report import write_report
from training.sizes import engine_units

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_CROSS_FIT",
    "DEFAULT_FIT",
    "DEFAULT_HOLDOUT",
    "DEFAULT_OWN_SPREAD",
    "DEFAULT_SCORING",
    "DEFAULT_SPAN",
    "LEVEL",
    "SHIFT",
    "train_and_publish",
]

log = logging.getLogger("anomalyd.training")
DEFAULT_FIT = FitConfig()
# The sustained rule (a run of same-signed errors, see detector.core.rules) is on by default:
# level shifts, drifts and broken correlations are missed without it.
DEFAULT_SPAN = 20
# The peak rule (the largest per-feature error) is calibrated with the budget: off without one.
# The shift rule (detector.core.shift; ``--no-shift``): on dev fleets recall (daily) 0.67 ->
# 0.86 with no clean false incident of its own, and on the integration test's pump fleet all
# 17 of its incidents lie inside injected anomalies (docs/quality.md, sessions 10 and 11).
SHIFT = ShiftConfig()
# The sustained rule judges a stream's averages against its own spread of them (``--no-own-
# spread``: the fleet's): a stream misjudged one way opened false incidents (quality.md, s. 11).
DEFAULT_OWN_SPREAD = True
# The spike rule (a value that jumps and comes back, detector.core.spike), with the budget:
# on square-cycle dev fleets, where the cycle's edges set the peak rule's threshold, it
# catches spikes and noise bursts no one-reading rule sees (docs/quality.md, session 16).
# Every stream's errors are judged in units of its own spread of them (``--no-own-scale``:
# the fleet's whitening alone): on a clean coloured dev fleet every false incident came from
# a stream and channel erring 1.4-1.5x the fleet (docs/quality.md, session 17).
# The difference rule (a channel's change far beyond the stream's usual ones, no model,
# detector.core.difference; ``--no-difference`` turns it off): on dev fleets where the model
# errs more than a channel's own last reading it catches drifts and level shifts the others
# miss, with no clean false incident of its own (docs/quality.md, session 26).
# The level rule (detector.core.level; ``--no-level``): on dev fleets duty's recall 0.71 ->
# 0.89, its clean false incidents within its share of the budget (quality.md, session 46).
LEVEL = LevelConfig()
DEFAULT_SCORING = ScoringConfig(
    own_scale=True,
    sustained=SustainConfig(DEFAULT_SPAN, own=DEFAULT_OWN_SPREAD),
    peak=PeakConfig(),
    shift=SHIFT,
    level=LEVEL,
    spike=SpikeConfig(),
    difference=DifferenceConfig(),
)
DEFAULT_BUDGET = 0.5  # false incidents per stream per 10,000 readings, on clean history
DEFAULT_HOLDOUT = 0.25  # of the streams, held out of the fit for calibration
# Fit a model without each other fold too and pool the folds' statistics for the budget.
DEFAULT_CROSS_FIT = True


def _calibrate(
    res: FitResult,
    features: Sequence[str],
    cs: CalSet,
    base: ScoringConfig,
    opts: dict[str, Any],
) -> tuple[ReconstructionLSTM, Scaler, tuple[float, ...], Calibration]:
    """Equalise the fit's errors and calibrate every rule on ``cs`` (thresholds by rate)."""
    # The whitening is measured where the scale is, on the whole fleet: measured on the
    # held-out streams alone it gave them unit covariance, which the live fleet has not.
    module, scaler, rms, w = equalize_and_whiten(
        res.module,
        res.scaler,
        features,
        cs.scale_series,
        collect_from=cs.scale_from,
        device=res.device,
        context=base.context,
        held=base.held,
    )
    try:
        cal = calibrate_detail(
            module,
            scaler,
            features,
            cs.series,
            base,
            opts["quantile"],
            collect_from=cs.collect_from,
            floor=opts["floor"],
            device=res.device,
            alarm_rate=opts["alarm_rate"],
            whiten=w if opts["whiten"] else False,
            history=cs.history,
            prior_from=cs.scale_series,
        )
    except ValueError as exc:
        raise InputError(f"cannot calibrate: {exc}; {short_history(cs.scale_series)}") from exc
    return module, scaler, rms, cal


def _part(module: ReconstructionLSTM, scaler: Scaler, cs: CalSet, cal: Calibration) -> Part:
    start = None if cs.held_out_streams else cs.collect_from
    return Part(module, scaler, cs.series, cal.scoring, start)


def _cross_parts(
    series: Sequence[StreamSeries],
    features: Sequence[str],
    split: list[list[int]],
    cfg: FitConfig,
    base: ScoringConfig,
    opts: dict[str, Any],
    first_s: float,
) -> list[Part]:
    """The other folds' models, each fitted without its fold and calibrated on it."""
    parts, eta = [], PartsEta(len(split) - 1, first_s)  # first_s: the shipped model's
    for k, fold in enumerate(split[1:], start=2):
        log.info("cross-fit %d of %d: %d streams held out%s", k, len(split), len(fold), eta.left())
        res = _fit_without(series, features, fold, cfg, None)
        cs = calibration_set(series, fold, res, [])
        module, scaler, _, cal = _calibrate(res, features, cs, base, opts)
        parts.append(_part(module, scaler, cs, cal))
        eta.tick()
    return parts


def _time_parts(
    series: Sequence[StreamSeries],
    features: Sequence[str],
    tails: Sequence[int],
    cfg: FitConfig,
    base: ScoringConfig,
    opts: dict[str, Any],
    first_s: float,
) -> list[Part]:
    """Where no stream is held out: each stream's history before its held-out tail
    (``tails``, the shipped model's) cut into as many blocks as tails fit in a history, one
    more model fitted without each block (the readings before and after it, as two series)
    and calibrated on it, warmed up by the ``CONTEXT`` readings before it — the first block
    from a cold state, as a new stream: its scale and prior are measured once the state has
    settled, as a held-out stream's, its thresholds' statistics from the warm-up on. A block
    too short to fit or calibrate on is left out."""
    k = max(round(1 / cfg.val_fraction) - 1, 1)
    parts, eta = [], PartsEta(k, first_s)
    for j in range(k):
        edges = [(round(j * t / k), round((j + 1) * t / k)) for t in tails]
        kept = [(s, a, b) for s, (a, b) in zip(series, edges, strict=True) if b > a]
        if not kept:
            continue
        log.info("cross-fit %d of %d: block %d held out%s", j + 2, k + 1, j + 1, eta.left())
        rest = [p for s, a, b in kept for p in (cut(s, 0, a), cut(s, b, len(s))) if len(p) >= 2]
        blocks = [cut(s, max(0, a - CONTEXT), b) for s, a, b in kept]
        start = [a - max(0, a - CONTEXT) for _, a, _ in kept]
        # start is 0 only for the first block: measured once the cold state has settled
        first = [k0 or k for k0, k in zip(start, settled(blocks), strict=True)]
        cs = unheld(blocks, first, series)
        try:
            res = _fit_without(rest, features, [], cfg, None)
            module, scaler, _, cal = _calibrate(res, features, cs, base, opts)
        except InputError as exc:  # the shipped model's tails and the other blocks serve
            log.info("cross-fit block %d left out: %s", j + 1, exc)
            continue
        finally:
            eta.tick()
        parts.append(Part(module, scaler, blocks, cal.scoring, start))
    return parts


def _fit_without(
    series: Sequence[StreamSeries],
    features: Sequence[str],
    held: list[int],
    cfg: FitConfig,
    progress: Progress | None,
) -> FitResult:
    out = set(held)
    try:
        return fit([s for i, s in enumerate(series) if i not in out], features, cfg, progress)
    except ValueError as exc:
        raise InputError(f"cannot train: {exc}") from exc


def train_and_publish(
    series: Sequence[StreamSeries],
    features: Sequence[str],
    out_dir: Path,
    cfg: FitConfig = DEFAULT_FIT,
    name: str = "anomalyd",
    *,
    base: ScoringConfig = DEFAULT_SCORING,
    quantile: float = 0.999,
    floor: float = 3.5,
    alarm_rate: float | None = 1e-4,
    whiten: bool = True,
    budget: float | None = DEFAULT_BUDGET,
    holdout_fraction: float = DEFAULT_HOLDOUT,
    cross_fit: bool = DEFAULT_CROSS_FIT,
    progress: Progress | None = None,
    examples: int = 2,
    jobs: int = 1,
    context_how: str | Sequence[str] = "auto",
    held_auto: bool = True,
    tame: bool = True,
    sized: bool = True,
) -> Path:
    """Fit, equalise, calibrate, report and publish atomically; returns the version dir.

    ``budget``: false incidents per stream per 10,000 clean readings the thresholds aim at
    (None: thresholds from the per-reading ``alarm_rate`` alone, as before budgets).
    ``cross_fit``: fit the budget on every fold's streams, each by a model fitted without
    its fold (one more fit per fold), rather than on the shipped model's hold-out alone.
    ``jobs``: processes the budget's replays may use side by side (one per cross-fit part).
    ``context_how``: which channels the model reads and no rule judges
    (:func:`training.context.choose_context`: "auto", "none" or their names).
    ``held_auto``: find the held channels (:func:`training.context.held_channels`), whose
    exact repeats no rule but the flatline rule judges. ``tame``: read channels with a heavy
    right tail through a pseudo-log (:func:`training.tame.pseudo_log_scales`). ``sized``:
    read each stream at the fleet's size where sizes spread (:func:`training.sizes.fleet_sizes`).
    The new version becomes ``CURRENT``; running detectors pick it up on their next reload.
    """
    t0, split = time.monotonic(), folds(series, holdout_fraction)
    try:
        context = choose_context(series, features, context_how)
    except ValueError as exc:
        raise InputError(f"cannot train: {exc}") from exc
    held_ch = held_channels(series, features, context) if held_auto else ()
    served = served_scoring(out_dir, features)  # a retrain: what the running workers hold
    warn_if_context_changes(served, features, context, held_ch)
    if context:  # read by the model, judged by no rule and left out of its loss
        base, cfg = replace(base, context=context), replace(cfg, unscored=context)
    base = replace(base, held=held_ch)  # a repeat: read, and judged by the flatline rule alone
    # Everything below works in the units the engine will read: pseudo-log, fleet's size
    series, scales, sizes = engine_units(series, features, context + held_ch, served, tame, sized)
    held = split[0] if split else []
    res = _fit_without(series, features, held, cfg, progress)
    fit_idx = [i for i in range(len(series)) if i not in set(held)]
    cs = calibration_set(series, held, res, fit_idx)
    opts = {
        "quantile": quantile,
        "floor": floor,
        "alarm_rate": alarm_rate,
        "whiten": whiten,
        "budget": budget,
        "cross_fit": cross_fit,
    }
    with each_message_once(
        "training.calibrate", "training.shiftcal", "training.levelcal", "training.diffcal"
    ):  # a rule off: once
        module, scaler, rms, cal = _calibrate(res, features, cs, base, opts)
        parts, first_s = [_part(module, scaler, cs, cal)], time.monotonic() - t0
        if budget is not None and cross_fit and split:
            parts += _cross_parts(series, features, split, cfg, base, opts, first_s)
        elif budget is not None and cross_fit:
            parts += _time_parts(series, features, res.split, cfg, base, opts, first_s)
    report = None
    if budget is not None:
        try:
            scorings, report = fit_budget_pooled(
                parts, features, budget, floor=floor, device=res.device, jobs=jobs
            )
        except ValueError as exc:
            raise InputError(f"cannot calibrate: {exc}; {short_history(series)}") from exc
        cal = replace(cal, scoring=scorings[0])
    shown = _examples(module, scaler, features, cs, cal.scoring, res.device, examples, scales)
    metrics = _metrics(res, features, rms, cal, opts, cs, report)
    scoring = replace(cal.scoring, pseudo_log=scales, sizes=sizes)  # as the engine reads
    bundle = ModelBundle(name, 0, tuple(features), module, scaler, scoring)
    with tempfile.TemporaryDirectory(prefix="anomalyd-report-") as tmp:
        files = write_report(
            Path(tmp),
            history=res.history,
            best_epoch=res.best_epoch,
            calibration=cal,
            examples=shown,
            features=features,
            summary={"data_range": res.data_range, "metrics": metrics},
        )
        return publish(
            out_dir,
            bundle,
            files=files,
            extra={
                "data_range": res.data_range,
                "metrics": metrics,
                "training": {**cfg.to_dict(), "history": res.history},
            },
        )


def _examples(
    module: ReconstructionLSTM,
    scaler: Scaler,
    features: Sequence[str],
    cs: CalSet,
    scoring: ScoringConfig,
    device: str,
    examples: int,
    parts: tuple[float, ...] = (),
) -> list[tuple[str, Any, np.ndarray]]:
    """A few calibration streams scored live, for the report's reconstruction plots, in
    raw units (``parts``: the pseudo-log the series were read through), at the fleet's size."""
    picks = [i for i, s in enumerate(cs.series) if cs.collect_from[i] < len(s)][:examples]
    if not picks:
        return []
    # One replay of them all: a replay of one stream is one reading per engine step.
    series = [cs.series[i] for i in picks]
    start = [cs.collect_from[i] for i in picks]
    run = run_engine(module, scaler, features, series, scoring, collect_from=start, device=device)
    run = replace(run, expected=raw_of(run.expected, parts))
    return [
        (s.stream_id, run.of_stream(j), raw_of(s.values[k:], parts))
        for j, (s, k) in enumerate(zip(series, start, strict=True))
    ]


def _metrics(
    res: FitResult,
    features: Sequence[str],
    rms: tuple[float, ...],
    cal: Calibration,
    opts: dict[str, Any],
    cs: CalSet,
    report: BudgetReport | None,
) -> dict[str, Any]:
    best = res.history[res.best_epoch - 1]
    return {
        "train_loss": best["train_loss"],
        "val_loss": best["val_loss"],
        "best_epoch": res.best_epoch,
        "epochs_run": len(res.history),
        "fit_seconds": round(res.seconds, 2),
        "device": res.device,
        "feature_residual_rms": dict(zip(features, rms, strict=True)),
        "loss_weights": dict(zip(features, res.loss_weights, strict=True)),
        "val_readings": int(cal.scores.size),
        "val_score_quantiles": {
            str(q): float(np.quantile(cal.scores, q)) for q in (0.5, 0.99, 0.999)
        },
        "val_flag_rate": float((cal.scores >= cal.scoring.threshold).mean()),
        "calibration": {
            **opts,
            "streams": [s.stream_id for s in cs.series] if cs.held_out_streams else [],
            "held_out_streams": cs.held_out_streams,
            "budget_report": None if report is None else report.to_dict(),
        },
    }
