"""From reconstruction errors to anomaly decisions, vectorised over a batch of streams.

For reading t of a stream the model expects ``x̂_t`` (from the state before t). In scaler
units the per-feature error is ``e = x - x̂``; missing features are masked out. The raw
error is the RMS of ``e`` over observed features. Each stream keeps running statistics of
its raw error (an exponentially weighted mean and variance over ``window`` readings),
shrunk toward the training population's (``error_mean``, ``error_std``) while the stream
is young — so a new stream is scored sensibly from its first reading and a noisy stream
is judged against its own noise. The score is the raw error's z-value under those
statistics, the likelihood its normal CDF in [0, 1], and a reading is anomalous when its
stream is past warm-up and the score reaches the calibrated ``threshold``.

A stuck sensor repeats one value while its channel would move: its one-step error is no
larger than usual, so it has a rule of its own — a reading is also anomalous when a feature
has repeated its exact value ``stuck_after[f]`` times in a row (0: the rule is off for that
feature, as for a quantised channel that repeats normally; the trainer calibrates it).

Two options serve alert consumers that rank and de-duplicate alerts (both off by default):

- ``average`` > 1 scores the *short-term average* of the raw error (exponentially weighted,
  the centre of mass of a ``average``-reading moving average) instead of each reading's:
  one surprising reading is common in noisy data, a run of them is what an operator calls
  an anomaly (the anomaly likelihood of HTM, Ahmad et al. 2017). The running statistics
  then track the average, so the score is its z-value under the average's own history.
- ``cooldown`` > 0: after an alert, the stream's next ``cooldown`` readings raise no alert
  (one incident, one alert). They are still judged and, when over the threshold, protected
  and counted in the run of anomalies; only ``anomalous`` (what is alerted) is withheld.

A *sustained* deviation (``sustain`` > 0, off by default) — a level shift, a drift, a
channel that stopped following the others — is often within one reading's noise at every
reading: it is the persistence of the error's sign that is news. Each feature's whitened
error (clipped at ``SUSTAIN_CLIP``) is averaged over ~``sustain`` readings (exponentially
weighted, from the end of warm-up); a reading is also anomalous when some feature's average
reaches ``sustain_threshold`` times that feature's ``sustain_scale`` (the average's spread on
clean held-out data; the trainer calibrates both). The engine keeps the averages.

*New territory* (``range_margin`` > 0, off by default): a reading with a feature more than
``range_margin`` x (the feature's range so far) beyond every value the stream has shown —
once it has shown ``range_after`` of them — is alerted with likelihood 1, at most once per
``cooldown`` readings. A level never seen is news whatever the model expected (HTM calls
it a spatial anomaly), and it has its own cooldown: it and the error alerts say different
things and do not silence each other. The engine keeps the ranges.

The likelihood is the normal CDF of the score while the upper tail is at least ``1e-4``;
beyond that it is ``1 - 1e-4 · ln(1e-4) / ln Q(score)``, continuous and still rising, so
that float32 keeps ranking alerts far into the tail (``Φ(z)`` itself is exactly 1.0 in
float32 for every z above ~5.4): z = 10 and 11 give 0.999983 and 0.999985, z = 50 still
differs from z = 40.

Statistics columns (``STAT_WIDTH`` per stream): count, mean, variance, run of consecutive
anomalies, readings since the state last restarted, short-term average of the raw error,
readings of cooldown left, readings of new territory's cooldown left, readings since the
last anomalous one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "AGE",
    "AVG",
    "CALM",
    "COUNT",
    "MEAN",
    "QUIET",
    "RANGE_QUIET",
    "RUN",
    "STAT_WIDTH",
    "SUSTAIN_CLIP",
    "VAR",
    "Scaler",
    "ScoringConfig",
    "StepScores",
    "feature_errors",
    "likelihood_of",
    "score_step",
    "sustain_step",
    "sustained_average",
]

COUNT, MEAN, VAR, RUN, AGE, AVG, QUIET, RANGE_QUIET, CALM = range(9)
STAT_WIDTH = 9
SUSTAIN_CLIP = 10.0  # whitened error beyond which a reading adds no more to its average
# The sustained rule starts no alert within this many ``sustain`` spans of the stream's last
# anomalous reading (it may extend a run that is going on): an incident's aftermath — the
# average's memory of it, the state finding its way back — is not a new incident.
SUSTAIN_HOLD = 3
_SQRT2 = math.sqrt(2.0)
_KNEE = 1e-4  # upper tail below which the likelihood switches to its log-scale form
_LOG_KNEE = math.log(_KNEE)


@dataclass(frozen=True)
class ScoringConfig:
    """How errors become decisions. ``threshold`` and the error prior come from training."""

    threshold: float = 4.0  # on the score (z-value of the raw error)
    error_mean: float = 1.0  # training population's raw-error mean, scaler units
    error_std: float = 0.5  # and its standard deviation
    warmup: int = 10  # readings after a (re)start before any decision
    window: int = 1000  # horizon of the running statistics, readings
    prior_weight: float = 100.0  # pseudo-readings of the training prior in the statistics
    std_floor: float = 0.05  # floor on the error std, as a fraction of error_std
    protect_state: bool = True  # feed the expectation, not the anomalous reading
    protect_max: int = 30  # ... for at most this many anomalies in a row (a new regime)
    # Whitening of the per-feature errors, an F x F matrix flattened row-major (empty: the
    # identity). Calibrated from held-out residuals as Σ^-1/2, it makes the raw error a
    # Mahalanobis distance: channels that normally err together (a shared, unpredictable
    # load) stop hiding a channel that breaks from them.
    whiten: tuple[float, ...] = ()
    # Per feature: exact repeats in a row that make a sensor stuck (0 or empty: off).
    stuck_after: tuple[int, ...] = ()
    average: int = 1  # readings in the short-term average that is scored (1: each reading)
    cooldown: int = 0  # readings after an alert that raise no further alert (0: off)
    range_margin: float = 0.0  # > 0: new territory, this fraction of the range beyond it
    range_after: int = 0  # values of a feature seen before its range counts
    sustain: int = 0  # readings in each feature's average of signed errors (0: off)
    sustain_scale: tuple[float, ...] = ()  # per feature, that average's clean spread
    sustain_threshold: float = 0.0  # on |average| / scale (0: not calibrated, off)

    def __post_init__(self) -> None:
        if self.error_std <= 0 or self.window < 1 or self.prior_weight < 0:
            raise ValueError(f"error_std > 0, window >= 1, prior_weight >= 0 needed: {self}")
        if self.average < 1 or self.cooldown < 0:
            raise ValueError(
                f"average >= 1 and cooldown >= 0 needed, got {self.average}, {self.cooldown}"
            )
        if not self.range_margin >= 0 or self.range_after < 0:
            raise ValueError(
                "range_margin >= 0 and range_after >= 0 needed, got "
                f"{self.range_margin}, {self.range_after}"
            )
        bad_scale = any(not v > 0 for v in self.sustain_scale)
        if self.sustain < 0 or not self.sustain_threshold >= 0 or bad_scale:
            raise ValueError(
                "sustain >= 0, sustain_threshold >= 0 and a positive sustain_scale needed, "
                f"got {self.sustain}, {self.sustain_threshold}, {self.sustain_scale}"
            )
        n = math.isqrt(len(self.whiten))
        if n * n != len(self.whiten) or not all(math.isfinite(v) for v in self.whiten):
            raise ValueError("whiten must be a finite square matrix flattened row-major")

    def whiten_matrix(self, features: int) -> Tensor | None:
        """The whitening matrix (F, F), or None for the identity."""
        if not self.whiten:
            return None
        if len(self.whiten) != features * features:
            raise ValueError(
                f"whiten is {math.isqrt(len(self.whiten))}x.. but the model has {features} features"
            )
        return torch.tensor(self.whiten, dtype=torch.float32).reshape(features, features)

    def sustains(self, features: int) -> bool:
        """Whether the sustained rule is on (and calibrated) for ``features`` features."""
        return (
            self.sustain > 0 and self.sustain_threshold > 0 and len(self.sustain_scale) == features
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["whiten"] = list(self.whiten)
        d["sustain_scale"] = list(self.sustain_scale)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoringConfig:
        known = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in known}
        for key in ("whiten", "sustain_scale"):
            if key in kw:
                kw[key] = tuple(float(v) for v in kw[key])
        return cls(**kw)


@dataclass(frozen=True)
class Scaler:
    """Per-feature affine scaling to the model's units: ``(raw - mean) / std``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError("scaler mean and std must have one entry per feature")
        if any(not s > 0 for s in self.std):
            raise ValueError(f"scaler std must be positive, got {self.std}")


@dataclass(frozen=True)
class StepScores:
    """One wave's scores; tensors (B,) unless noted, on the engine's device."""

    errors: Tensor  # (B, F) per-feature (whitened) error, 0 where missing
    raw: Tensor  # RMS error over observed features
    score: Tensor  # z-value under the stream's statistics
    likelihood: Tensor  # in [0, 1], monotone in the score: see likelihood_of
    anomalous: Tensor  # bool: alerted (over the threshold, warm, not in a cooldown)
    protect: Tensor  # bool: feed the expectation instead of the reading
    stats: Tensor  # (B, STAT_WIDTH) updated statistics


def feature_errors(
    x: Tensor, x_hat: Tensor, whiten: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-feature errors (B, F), raw RMS error (B,), observed mask (B, F).

    Errors are ``x - x̂`` in scaler units, 0 where missing (nan), then whitened by
    ``whiten`` (F, F) when given; the raw error is their RMS over the observed features.
    """
    observed = ~torch.isnan(x)
    err = torch.where(observed, x - x_hat, torch.zeros_like(x))
    if whiten is not None:
        err = err @ whiten.T  # (B, F)
    n_obs = observed.sum(dim=1)
    raw = torch.sqrt((err * err).sum(dim=1) / n_obs.clamp(min=1))
    return err, raw, observed


def likelihood_of(score: Tensor) -> Tensor:
    """Likelihood in [0, 1] of scores (any shape): ``Φ(z)``, with a log-scale upper tail.

    >>> likelihood_of(torch.tensor([0.0, 4.0, 10.0, 11.0])).tolist()  # doctest: +ELLIPSIS
    [0.5, 0.99991..., 0.99998..., 0.99998...]
    """
    log_q = torch.special.log_ndtr(-score)  # ln Q(z), exact far into the tail
    body = 0.5 * (1 + torch.erf(score / _SQRT2))
    tail = 1 - _KNEE * _LOG_KNEE / torch.minimum(log_q, torch.full_like(log_q, _LOG_KNEE))
    return torch.where(log_q >= _LOG_KNEE, body, tail)


def sustained_average(errors: Tensor, observed: Tensor, avg: Tensor, span: int) -> Tensor:
    """Per-feature averages of signed errors (B, F) after one more reading (B, F).

    Errors are clipped at ``SUSTAIN_CLIP``; a missing value leaves its average as it was.
    The one definition of the average: the engine keeps it, the trainer calibrates on it.
    """
    rate = 2.0 / (span + 1)
    e = errors.clamp(-SUSTAIN_CLIP, SUSTAIN_CLIP)
    return torch.where(observed, avg + rate * (e - avg), avg)


def sustain_step(
    errors: Tensor, observed: Tensor, avg: Tensor, age: Tensor, cfg: ScoringConfig, limit: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-feature averages of signed errors after one reading, and the readings they flag.

    ``errors`` (B, F) whitened, ``observed`` (B, F), ``avg`` (B, F) the averages before,
    ``age`` (B,) readings since the state restarted, ``limit`` (F,) the |average| that
    fires (``sustain_threshold × sustain_scale``). Averaging starts at the end of warm-up
    (a cold state's first errors are no sign of anything) and decides once it has seen
    ``sustain`` readings.
    """
    started = (age >= cfg.warmup).unsqueeze(1) & observed
    avg2 = sustained_average(errors, started, avg, cfg.sustain)
    ready = age >= cfg.warmup + cfg.sustain
    hit = ready & (avg2.abs() >= limit).any(dim=1)
    return avg2, hit


def score_step(
    errors: Tensor,
    raw: Tensor,
    observed: Tensor,
    stats: Tensor,
    cfg: ScoringConfig,
    stuck: Tensor | None = None,
    beyond: Tensor | None = None,
    sustained: Tensor | None = None,
) -> StepScores:
    """Score one wave against each stream's statistics ``stats`` (B, STAT_WIDTH); update them.

    ``stuck`` (B,) marks readings whose sensor the flatline rule found stuck; ``beyond``
    (B,) readings in new territory, ``sustained`` (B,) readings where an error has kept its
    sign (the engine keeps the ranges and the averages: see :func:`sustain_step`).
    """
    n = stats[:, COUNT]
    any_obs = observed.any(dim=1)
    if cfg.average > 1:  # EW average; a plain mean over its first readings after a restart
        rate = torch.clamp(1.0 / (stats[:, AGE] + 1), min=2.0 / (cfg.average + 1))
        avg = torch.where(any_obs, stats[:, AVG] + rate * (raw - stats[:, AVG]), stats[:, AVG])
    else:
        avg = raw
    w = n / (n + cfg.prior_weight) if cfg.prior_weight > 0 else torch.ones_like(n)
    mean = w * stats[:, MEAN] + (1 - w) * cfg.error_mean
    var = w * stats[:, VAR] + (1 - w) * cfg.error_std**2
    std = torch.sqrt(var).clamp(min=cfg.std_floor * cfg.error_std)
    score = (avg - mean) / std
    warm = stats[:, AGE] >= cfg.warmup
    hit = score >= cfg.threshold
    if stuck is not None:  # a rule's verdict reads as a score at the threshold
        hit = hit | stuck
        score = torch.where(stuck, score.clamp(min=cfg.threshold), score)
    # Protected: readings that are wrong themselves. A sustained error is a verdict on the
    # trend, not on this reading, which is fed as it is (measured: fed the expectation
    # instead, the state drifts from the stream and the rule feeds itself).
    own = warm & any_obs & hit
    calm = stats[:, CALM]
    if sustained is not None:
        sustained = sustained & ((calm >= SUSTAIN_HOLD * cfg.sustain) | (stats[:, RUN] > 0))
        hit = hit | sustained
        score = torch.where(sustained, score.clamp(min=cfg.threshold), score)
    likelihood = likelihood_of(score)
    over = warm & any_obs & hit
    quiet = stats[:, QUIET]
    anomalous = over & (quiet <= 0)

    # Winsorise what enters the statistics, so an anomaly does not teach the stream that
    # anomalies are normal (the cap stays above the mean whatever the threshold); readings
    # with nothing observed teach nothing.
    clipped = torch.minimum(avg, mean + max(cfg.threshold, 1.0) * std)
    n2 = torch.where(any_obs, (n + 1).clamp(max=cfg.window), n)
    alpha = torch.where(any_obs, 1.0 / n2.clamp(min=1), torch.zeros_like(n))
    delta = clipped - stats[:, MEAN]
    mean2 = stats[:, MEAN] + alpha * delta
    var2 = (1 - alpha) * (stats[:, VAR] + alpha * delta * delta)
    run2 = torch.where(over, stats[:, RUN] + 1, torch.zeros_like(n))
    calm2 = torch.where(over, torch.zeros_like(n), (calm + 1).clamp(max=2.0**24))
    protect = own & (run2 <= cfg.protect_max) if cfg.protect_state else over & False
    quiet2 = torch.where(anomalous, float(cfg.cooldown), (quiet - 1).clamp(min=0))
    range_quiet = stats[:, RANGE_QUIET]
    range_quiet2 = (range_quiet - 1).clamp(min=0)
    if beyond is not None:  # its own cooldown, counted like the error alerts'
        fire = beyond & any_obs & (range_quiet <= 0)
        anomalous = anomalous | fire
        score = torch.where(fire, score.clamp(min=cfg.threshold), score)
        likelihood = torch.where(fire, torch.ones_like(likelihood), likelihood)
        range_quiet2 = torch.where(fire, float(cfg.cooldown), range_quiet2)
    new_stats = torch.stack(
        [n2, mean2, var2, run2, stats[:, AGE] + 1, avg, quiet2, range_quiet2, calm2], dim=1
    )
    return StepScores(errors, raw, score, likelihood, anomalous, protect, new_stats)
