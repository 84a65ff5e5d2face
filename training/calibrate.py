"""Calibrate scoring on held-out data through the live engine, exactly as a detector scores.

Two steps, both measured by running :class:`detector.core.engine.Engine` over the validation
streams in time order (``detector.replay.score_stream``: the code path of live traffic):

1. :func:`equalize_errors` — rescales the model so that each feature's one-step error has
   unit RMS on held-out data. The live raw error is the RMS over features in scaler units;
   with the data scaler a noisy feature (vibration) drowns a precise one (temperature),
   and a 10σ spike on the precise one barely moves the RMS. Dividing each feature's unit
   by its residual RMS makes the raw error a diagonal Mahalanobis distance, so a spike
   counts by how unexpected it is. The network is changed *exactly* (the first LSTM
   layer's input columns and the head's rows absorb the factor), so its expectations are
   the same readings in raw units.
2. :func:`calibrate_detail` — sets the error prior and the threshold:

   - ``error_mean`` / ``error_std``: the raw errors after warm-up, winsorised at their
     99.5th percentile, then mean and standard deviation. That is the statistic a stream's
     own running statistics converge to live (they winsorise too), so a young stream's
     score does not jump as its own statistics take over from the prior; winsorising keeps
     a few odd validation readings from inflating the prior.
   - ``threshold``: the ``quantile`` (0.999) of the validation scores, re-run with that
     prior, never below ``floor`` (3.5). A quantile of clean data fixes the false-alarm
     rate per reading (about 1 − quantile) whatever the error distribution's shape; the
     floor keeps a tiny or very regular validation set from giving a hair trigger.

   Both runs use an infinite threshold, so that no reading is protected or winsorised by a
   threshold that is still being chosen.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import numpy.typing as npt

from detector.core.bundle import ModelBundle
from detector.core.engine import Engine
from detector.core.held import repeats
from detector.core.model import ReconstructionLSTM
from detector.core.rules import FlatlineConfig, SustainConfig
from detector.core.schema import Reading
from detector.core.scoring import Scaler, ScoringConfig
from detector.replay import score_stream
from training.data import StreamSeries
from training.equalize import estimate_whitening, rescaled
from training.flatlinecal import stuck_limits
from training.modelfree import calibrate_model_free
from training.sustaincal import sustained_averages, sustained_statistic
from training.tail import tail_threshold

__all__ = [
    "ERRORS_ONLY",
    "Calibration",
    "EngineRun",
    "calibrate_detail",
    "equalize_and_whiten",
    "equalize_errors",
    "run_engine",
    "sustained_averages",
]

F32 = npt.NDArray[np.float32]
log = logging.getLogger(__name__)
# Every rule off, nothing protected: each reading is fed as it is and only the model's
# errors are measured (add the model's whitening for the engine's raw error).
ERRORS_ONLY = ScoringConfig(threshold=math.inf, protect_state=False)


@dataclass(frozen=True)
class EngineRun:
    """Per-reading engine outputs for the collected readings (N of them), stream-major."""

    stream: npt.NDArray[np.int64]  # (N,) index into the series
    index: npt.NDArray[np.int64]  # (N,) position within its series
    raw: F32  # (N,) RMS error, scaler units
    score: F32  # (N,)
    errors: F32  # (N, F) per-feature error, scaler units, 0 where missing
    observed: npt.NDArray[np.bool_]  # (N, F)
    expected: F32  # (N, F) raw units
    opened: npt.NDArray[np.bool_]  # (N,) an alert: an incident opened (or a flagged reading)
    rules: npt.NDArray[np.int64]  # (N,) bit mask of the rules that flagged the reading
    # (N, F) the errors of the stream's reading before, 0 where missing or none: what the
    # spike rule pairs with, warm-up readings included as the engine's state holds them
    e_prev: F32

    def of_stream(self, i: int) -> EngineRun:
        """The readings of series ``i`` alone."""
        m = self.stream == i
        return EngineRun(**{f.name: getattr(self, f.name)[m] for f in fields(self)})


@dataclass(frozen=True)
class Calibration:
    """The calibrated scoring and the validation scores it was chosen from."""

    scoring: ScoringConfig
    raw: F32  # (N,) raw errors after warm-up
    scores: F32  # (N,) scores under the calibrated prior


def run_engine(
    module: ReconstructionLSTM,
    scaler: Scaler,
    features: Sequence[str],
    series: Sequence[StreamSeries],
    scoring: ScoringConfig,
    *,
    collect_from: Sequence[int] | None = None,
    device: str = "cpu",
) -> EngineRun:
    """Score ``series`` through a fresh :class:`Engine`, all streams interleaved in time order.

    Readings of stream i before ``collect_from[i]`` only warm its state up (default: the
    scoring warm-up). The module is copied: the caller's stays where it is.
    """
    bundle = ModelBundle("calibration", 0, tuple(features), copy.deepcopy(module), scaler, scoring)
    engine = Engine(bundle, max_streams=len(series) + 1, device=device)
    lens = np.array([len(s) for s in series], dtype=np.int64)
    sid = np.repeat(np.arange(len(series)), lens)  # (N,)
    pos = np.concatenate([np.arange(n) for n in lens]) if len(lens) else lens
    ts = np.concatenate([s.ts_ms for s in series])
    order = np.lexsort((sid, ts))  # live order: by time, ties by stream
    vals = np.concatenate([s.values for s in series]).astype(np.float32)
    ids = [s.stream_id for s in series]
    readings = (
        Reading(ids[i], int(t), tuple(v))
        for i, t, v in zip(
            sid[order].tolist(), ts[order].tolist(), vals[order].tolist(), strict=True
        )
    )
    f = len(features)
    raw = np.empty(len(order), np.float32)
    score = np.empty(len(order), np.float32)
    errors = np.empty((len(order), f), np.float32)
    expected = np.empty((len(order), f), np.float32)
    opened = np.empty(len(order), bool)
    rules = np.empty(len(order), np.int64)
    k = 0
    for batch, res in score_stream(engine, readings):
        n = len(batch)
        raw[k : k + n], score[k : k + n] = res.raw, res.score
        errors[k : k + n], expected[k : k + n] = res.errors, res.expected
        opened[k : k + n], rules[k : k + n] = res.anomalous, res.rules
        k += n
    start = np.asarray(
        collect_from if collect_from is not None else [scoring.warmup] * len(series), dtype=np.int64
    )
    mask = scoring.judged_mask(f)
    judged = np.ones(f, bool) if mask is None else mask.numpy()  # context channels: unjudged
    unjudged = np.isnan(vals)  # missing, or a held channel's repeat (detector.core.held)
    if scoring.held:  # compared in scaler units, as the engine compares them
        unjudged |= np.concatenate([repeats(s.values, scoring.held, scaler) for s in series])
    err = np.empty_like(errors)  # stream-major, each reading's own errors, 0 where missing
    err[order] = errors
    err[unjudged] = 0.0
    e_prev = np.zeros_like(err)
    e_prev[1:] = np.where((pos[1:] > 0)[:, None], err[:-1], 0.0)
    keep = pos[order] >= start[sid[order]]
    back = order[keep]  # original (stream-major) index of each kept reading
    resort = np.argsort(back, kind="stable")  # back to stream-major order
    sel = np.flatnonzero(keep)[resort]
    return EngineRun(
        sid[back[resort]],
        pos[back[resort]],
        raw[sel],
        score[sel],
        errors[sel],
        ~unjudged[back[resort]] & judged,
        expected[sel],
        opened[sel],
        rules[sel],
        e_prev[back[resort]],
    )


def _whitened(observed: npt.NDArray[np.bool_], held: Sequence[int]) -> npt.NDArray[np.bool_]:
    """``observed`` without the held channels: the whitening keeps the identity for them, as
    for a context channel. Their updates come at other readings than the other channels'
    (measured only where every channel is observed, it would see too few rows, or none),
    and a row that mixed other channels' errors into theirs would judge their repeats."""
    if not held:
        return observed
    out = observed.copy()
    out[:, list(held)] = False
    return out


def equalize_errors(
    module: ReconstructionLSTM,
    scaler: Scaler,
    features: Sequence[str],
    series: Sequence[StreamSeries],
    *,
    collect_from: Sequence[int] | None = None,
    floor: float = 0.01,
    device: str = "cpu",
) -> tuple[ReconstructionLSTM, Scaler, tuple[float, ...]]:
    """An equivalent (module, scaler) whose per-feature held-out error RMS is 1.

    Returns the new module (a copy), the new scaler and each feature's residual RMS in the
    old scaler units (floored at ``floor``: no feature is trusted beyond 1% of its spread).
    """
    run = run_engine(
        module, scaler, features, series, ERRORS_ONLY, collect_from=collect_from, device=device
    )
    return rescaled(module, scaler, run.errors, run.observed, floor)


def equalize_and_whiten(
    module: ReconstructionLSTM,
    scaler: Scaler,
    features: Sequence[str],
    series: Sequence[StreamSeries],
    *,
    collect_from: Sequence[int] | None = None,
    device: str = "cpu",
    context: tuple[int, ...] = (),
    held: tuple[int, ...] = (),
) -> tuple[ReconstructionLSTM, Scaler, tuple[float, ...], tuple[float, ...]]:
    """:func:`equalize_errors`, and the whitening (:func:`estimate_whitening`) of the same
    errors in the new units: both measured on ``series``, one replay. A ``context`` channel,
    never judged, keeps its scale and the identity's row of the whitening; a ``held``
    channel's repeats, never judged, count in neither."""
    probe = replace(ERRORS_ONLY, context=context, held=held)
    run = run_engine(
        module, scaler, features, series, probe, collect_from=collect_from, device=device
    )
    out, new, rms = rescaled(module, scaler, run.errors, run.observed)
    # The equalised model expects the same readings: its errors are the old ones / std ratio.
    ratio = np.array([n / o for n, o in zip(new.std, scaler.std, strict=True)], np.float32)
    seen = _whitened(run.observed, held)
    w = estimate_whitening(run.errors / ratio, seen) if len(features) > 1 else ()
    return out, new, rms, w


def calibrate_detail(
    module: ReconstructionLSTM,
    scaler: Scaler,
    features: Sequence[str],
    series_val: Sequence[StreamSeries],
    base: ScoringConfig,
    quantile: float = 0.999,
    *,
    collect_from: Sequence[int] | None = None,
    floor: float = 3.5,
    device: str = "cpu",
    alarm_rate: float | None = None,
    whiten: bool | tuple[float, ...] = False,
    history: Sequence[StreamSeries] | None = None,
    prior_from: Sequence[StreamSeries] | None = None,
) -> Calibration:
    """``base`` with the error prior, whitening, flatline limits, threshold and sustained
    rule set from held-out ``series_val`` (scored from readings ``collect_from[i]`` on,
    default ``base.warmup``; earlier ones only warm the state up); also the validation raw
    errors and scores. The threshold is the ``quantile`` of the scores or, with
    ``alarm_rate``, a tail fit at that rate per reading; never below ``floor``. The
    flatline limits come from ``history`` when given (the streams' whole histories, where
    ``series_val`` is cut short): the longest normal repeat may lie anywhere in them.
    The shift, level and difference rules' priors and per-channel scales come from ``prior_from``
    when given (the whole fleet): live, every stream is judged by the shipped model's, so
    the thresholds are measured under them too, not under a few held-out streams' own. The
    scales are measured at the calibration's rate (``alarm_rate``), not at the rules'
    shares of a budget, which is set later.
    ``whiten``: measure the whitening on ``series_val`` (True), none (False), or this one
    (measured elsewhere: :func:`equalize_and_whiten` on the whole fleet)."""
    if not 0.5 <= quantile < 1:
        raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
    stuck = stuck_limits(series_val if history is None else history, len(features))
    base = replace(base, flatline=FlatlineConfig(stuck))
    probe = replace(base, threshold=math.inf, protect_state=False)
    # The whitening is measured on the fleet's errors, before any stream's own scale: the
    # engine whitens first and divides by the own spread after (ScoringConfig.own_scale).
    measure_w = whiten is True and len(features) > 1
    if not isinstance(whiten, bool):  # measured on the whole fleet
        probe, base = replace(probe, whiten=tuple(whiten)), replace(base, whiten=tuple(whiten))
    first = run_engine(
        module,
        scaler,
        features,
        series_val,
        replace(probe, own_scale=False) if measure_w else probe,
        collect_from=collect_from,
        device=device,
    )
    w = estimate_whitening(first.errors, _whitened(first.observed, base.held)) if measure_w else ()
    if w:
        probe = replace(probe, whiten=w)
        base = replace(base, whiten=w)
    if w and probe.own_scale:  # the prior describes the raw error the engine scores
        first = run_engine(
            module, scaler, features, series_val, probe, collect_from=collect_from, device=device
        )
    elif w:  # the same errors whitened: the engine's raw error, without another replay
        wm = np.asarray(w, dtype=np.float64).reshape(len(features), len(features))
        we = first.errors.astype(np.float64) @ wm.T
        n_obs = np.maximum(first.observed.sum(axis=1), 1)
        first = replace(first, raw=np.sqrt((we**2).sum(axis=1) / n_obs).astype(np.float32))
    raw = first.raw[first.observed.any(axis=1)]
    if raw.size < 10:
        raise ValueError(f"only {raw.size} validation readings after warm-up; need more data")
    clipped = np.minimum(raw, np.quantile(raw, 0.995)).astype(np.float64)
    mean = float(clipped.mean())
    std = max(float(clipped.std()), 1e-6 * max(mean, 1e-6))
    second = run_engine(
        module,
        scaler,
        features,
        series_val,
        replace(probe, error_mean=mean, error_std=std),
        collect_from=collect_from,
        device=device,
    )
    scores = second.score[second.observed.any(axis=1)]
    if alarm_rate is not None:
        threshold = max(floor, tail_threshold(scores, alarm_rate))
    else:
        threshold = max(floor, float(np.quantile(scores, quantile)))
    scoring = replace(base, error_mean=mean, error_std=std, threshold=threshold)
    if base.sustained is not None:
        rate = alarm_rate if alarm_rate is not None else 1 - quantile
        try:
            sustained = calibrate_sustain(second, base.sustained, rate, floor)
        except ValueError as exc:  # too little history for it: the other rules still serve
            log.warning("sustained rule off in this model: %s", exc)
        else:
            scoring = replace(scoring, sustained=sustained)
    rate = alarm_rate if alarm_rate is not None else 1 - quantile
    scoring = calibrate_model_free(series_val, scaler, scoring, rate, floor, prior_from)
    return Calibration(scoring, raw, scores)


def calibrate_sustain(
    run: EngineRun, base: SustainConfig, alarm_rate: float, floor: float
) -> SustainConfig:
    """The sustained rule's per-feature scale and threshold from a clean run's errors.

    The scale is each feature's average's standard deviation over the fleet; the threshold
    is fitted to the tail of the rule's statistic (``max_f |average_f| / scale_f``, or over
    each stream's own spread with ``own``) at ``alarm_rate / span`` per reading — an average
    over ``span`` readings changes that much more slowly, so this keeps its false *alerts*
    about as rare as the per-reading rule's.
    """
    span = base.span
    avg, ready = sustained_averages(run, span)
    avg = avg[ready]
    if len(avg) < 100:
        raise ValueError(
            f"only {len(avg)} validation readings with {span} before them; the sustained "
            "rule needs 100 (train on more history, or set a shorter --sustain)"
        )
    scale = tuple(float(v) for v in np.maximum(avg.std(axis=0), 1e-6))
    cfg = replace(base, scale=scale, threshold=math.inf)  # nothing winsorised yet
    z = sustained_statistic(run, cfg).astype(np.float32)
    threshold = max(floor, tail_threshold(z[np.isfinite(z)], alarm_rate / span))
    return replace(cfg, threshold=threshold)
