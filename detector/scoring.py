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

Statistics columns (``STAT_WIDTH`` per stream): count, mean, variance, run of consecutive
anomalies, readings since the state last restarted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "AGE",
    "COUNT",
    "MEAN",
    "RUN",
    "STAT_WIDTH",
    "VAR",
    "Scaler",
    "ScoringConfig",
    "StepScores",
    "feature_errors",
    "score_step",
]

COUNT, MEAN, VAR, RUN, AGE = range(5)
STAT_WIDTH = 5
_SQRT2 = math.sqrt(2.0)


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

    def __post_init__(self) -> None:
        if self.error_std <= 0 or self.window < 1 or self.prior_weight < 0:
            raise ValueError(f"error_std > 0, window >= 1, prior_weight >= 0 needed: {self}")
        n = math.isqrt(len(self.whiten))
        if n * n != len(self.whiten) or not all(math.isfinite(v) for v in self.whiten):
            raise ValueError("whiten must be a finite square matrix flattened row-major")

    def whiten_matrix(self, features: int) -> Tensor | None:
        """The whitening matrix (F, F), or None for the identity."""
        if not self.whiten:
            return None
        if len(self.whiten) != features * features:
            raise ValueError(f"whiten is {math.isqrt(len(self.whiten))}x.. but the model has "
                             f"{features} features")
        return torch.tensor(self.whiten, dtype=torch.float32).reshape(features, features)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["whiten"] = list(self.whiten)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoringConfig:
        known = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in known}
        if "whiten" in kw:
            kw["whiten"] = tuple(float(v) for v in kw["whiten"])
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
    likelihood: Tensor  # normal CDF of the score, in [0, 1]
    anomalous: Tensor  # bool
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


def score_step(
    errors: Tensor,
    raw: Tensor,
    observed: Tensor,
    stats: Tensor,
    cfg: ScoringConfig,
    stuck: Tensor | None = None,
) -> StepScores:
    """Score one wave against each stream's statistics ``stats`` (B, STAT_WIDTH); update them.

    ``stuck`` (B,) marks readings whose sensor the flatline rule found stuck.
    """
    n = stats[:, COUNT]
    w = n / (n + cfg.prior_weight) if cfg.prior_weight > 0 else torch.ones_like(n)
    mean = w * stats[:, MEAN] + (1 - w) * cfg.error_mean
    var = w * stats[:, VAR] + (1 - w) * cfg.error_std**2
    std = torch.sqrt(var).clamp(min=cfg.std_floor * cfg.error_std)
    score = (raw - mean) / std
    any_obs = observed.any(dim=1)
    warm = stats[:, AGE] >= cfg.warmup
    hit = score >= cfg.threshold
    if stuck is not None:
        hit = hit | stuck
        score = torch.where(stuck, score.clamp(min=cfg.threshold), score)
    likelihood = 0.5 * (1 + torch.erf(score / _SQRT2))
    anomalous = warm & any_obs & hit

    # Winsorise what enters the statistics, so an anomaly does not teach the stream that
    # anomalies are normal (the cap stays above the mean whatever the threshold); readings
    # with nothing observed teach nothing.
    clipped = torch.minimum(raw, mean + max(cfg.threshold, 1.0) * std)
    n2 = torch.where(any_obs, (n + 1).clamp(max=cfg.window), n)
    alpha = torch.where(any_obs, 1.0 / n2.clamp(min=1), torch.zeros_like(n))
    delta = clipped - stats[:, MEAN]
    mean2 = stats[:, MEAN] + alpha * delta
    var2 = (1 - alpha) * (stats[:, VAR] + alpha * delta * delta)
    run2 = torch.where(anomalous, stats[:, RUN] + 1, torch.zeros_like(n))
    protect = anomalous & (run2 <= cfg.protect_max) if cfg.protect_state else anomalous & False
    new_stats = torch.stack([n2, mean2, var2, run2, stats[:, AGE] + 1], dim=1)
    return StepScores(errors, raw, score, likelihood, anomalous, protect, new_stats)
