"""The model-free rules' calibration: the shift, level and difference rules' priors,
per-channel scales and thresholds from held-out clean series (a budget later replaces the
thresholds, :mod:`training.budget`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from detector.core.scoring import Scaler, ScoringConfig
from training.context import judged_only, shift_view
from training.data import StreamSeries
from training.diffcal import calibrate_difference
from training.levelcal import calibrate_level
from training.shiftcal import calibrate_shift

__all__ = ["calibrate_model_free"]


def calibrate_model_free(
    series_val: Sequence[StreamSeries],
    scaler: Scaler,
    scoring: ScoringConfig,
    rate: float,
    floor: float,
    prior_from: Sequence[StreamSeries] | None,
) -> ScoringConfig:
    """``scoring`` with the model-free rules it turns on calibrated at ``rate`` per reading.

    Each rule's threshold is measured on what it sees live (context channels missing, and
    held ones for the shift and level rules); the priors from the channels as they are (a
    prior must be positive; never used for them), from ``prior_from`` (the whole fleet)
    when given, and so are the shift, level and difference rules' per-channel scales: more
    streams than the few held out, and the budget then judges every part in the shipped
    model's scales."""
    prior_of = prior_from or series_val
    if scoring.shift is not None or scoring.level is not None:  # both read the same view
        val = shift_view(series_val, scoring)
        fleet = None if prior_from is None else shift_view(prior_from, scoring)
        if scoring.shift is not None:
            shift = calibrate_shift(val, scaler, scoring, rate, floor, prior_of, fleet)
            scoring = replace(scoring, shift=shift)
        if scoring.level is not None:
            level = calibrate_level(val, scaler, scoring, rate, floor, prior_of, fleet)
            scoring = replace(scoring, level=level)
    if scoring.difference is not None:
        difference = calibrate_difference(
            judged_only(series_val, scoring.context, scoring.held),
            scaler,
            scoring,
            rate,
            floor,
            prior_of,
            None if prior_from is None else judged_only(prior_from, scoring.context, scoring.held),
        )
        scoring = replace(scoring, difference=difference)
    return scoring
